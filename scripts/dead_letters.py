"""Inspect, replay and drop the messages the workers gave up on (`dead.letters`).

    .venv/bin/python -m scripts.dead_letters list [--stream audio.received] [--json]
    .venv/bin/python -m scripts.dead_letters replay 1733270000000-0 [...]
    .venv/bin/python -m scripts.dead_letters replay --all --stream exchange.completed
    .venv/bin/python -m scripts.dead_letters drop --all

`replay` puts each message back on the stream it came from, unchanged and with no
failures counted, once what made it fail is fixed (an archive that was full, a
bug since deployed). A replayed message past its asker's deadline is not answered
again: the workers archive what the learner said and skip the rest. Redis is
REDIS_URL (from the environment or .env).
"""

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime

from redis.asyncio import Redis

from shared import dead_letters
from shared.broker import redis_client
from shared.settings import CommonSettings


def _when(at: float | None) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds") if at else "-"


def _line(letter: dead_letters.DeadLetter) -> str:
    body = letter.body if len(letter.body) <= 120 else letter.body[:117] + "..."
    why = f" reason={letter.reason!r}" if letter.reason else ""
    return (
        f"{letter.id}  {letter.stream}  failures={letter.failures}  at={_when(letter.dead_at)}"
        f"  request={letter.request_id or '-'}{why}\n    {body}"
    )


async def _chosen(redis: Redis, args: argparse.Namespace) -> list[str]:
    if not args.all:
        return list(args.ids)
    everything = await dead_letters.listing(redis, stream=args.stream, count=args.count)
    return [letter.id for letter in everything]


async def run(args: argparse.Namespace, settings: CommonSettings) -> int:
    out = sys.stdout
    if args.command in ("replay", "drop") and not args.all and not args.ids:
        sys.stderr.write(f"{args.command}: name the entry ids, or pass --all\n")
        return 2
    redis = redis_client(settings)
    try:
        if args.command == "list":
            letters = await dead_letters.listing(redis, stream=args.stream, count=args.count)
            if args.json:
                for letter in letters:
                    out.write(letter.model_dump_json() + "\n")
            else:
                for letter in letters:
                    out.write(_line(letter) + "\n")
                counts = await dead_letters.counts(redis)
                summary = ", ".join(f"{s}: {n}" for s, n in counts.items()) or "none"
                out.write(f"dead letters per stream: {summary}\n")
            return 0
        ids = await _chosen(redis, args)
        if args.command == "replay":
            done = await dead_letters.replay(redis, ids, maxlen=settings.stream_maxlen)
        else:
            done = await dead_letters.drop(redis, ids)
    finally:
        await redis.aclose()
    verb = "replayed" if args.command == "replay" else "dropped"
    missing = sorted(set(ids) - set(done))
    out.write(json.dumps({verb: done, "not_found": missing}) + "\n")
    return 0 if not missing else 1


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="python -m scripts.dead_letters", description="Messages the workers gave up on."
    )
    commands = main.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="show dead letters, oldest first")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    for name, text in (
        ("replay", "put dead letters back on the stream they came from"),
        ("drop", "delete dead letters for good"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("ids", nargs="*", help="entry ids of dead.letters, as `list` shows")
        sub.add_argument("--all", action="store_true", help="every one (with --stream: its)")
    for sub in commands.choices.values():
        sub.add_argument("--stream", help="only those that came from this stream")
        sub.add_argument("--count", type=int, default=1000, help="at most this many (1000)")
    return main


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    sys.exit(asyncio.run(run(args, CommonSettings())))


if __name__ == "__main__":
    main()
