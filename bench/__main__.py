"""`python -m bench [--only SECTION] [--quick]`: every benchmark, or one of them.

- system: added latency of the service split, and sustained throughput
  (bench.system_bench, sections 1 and 2);
- ws: 1,000 concurrent WebSocket sessions on one gateway (section 3);
- stream: streaming clients against v1 clients, and the OpenAI-compatible
  provider against a fast local server (bench.stream_bench, sections 4 and 5);
- voice: transcription of a 5 s clip and the whole voice exchange with the
  embedded models (bench.voice_bench);
- search: archive ingest and search on synthetic captures (bench.search_bench);
- pwa: the PWA in Chromium: its size, opening it (first, return, offline) and a
  typed message's first words on screen (bench.pwa_bench);
- telephony: signed Twilio webhooks to their TwiML, and relay calls
  (bench.telephony_bench);
- tracing: the cost of exporting every span (bench.tracing_bench);
- recovery: a backlog of expired work draining, and the services carrying on
  after Redis is flushed or restarted (bench.recovery_bench);
- soak: 200 WebSocket sessions for 60 s, twice: every message answered and
  archived once, and each service's memory after the second round
  (bench.soak_bench; --sessions, --seconds).

Tables go to stdout as they are measured, to bench/results/<section>.md, and
together with the machine's description to bench/results/latest.md. Progress
goes to stderr.
"""

import argparse
import dataclasses
import logging
import resource
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from bench import (
    pwa_bench,
    recovery_bench,
    search_bench,
    soak_bench,
    stream_bench,
    system_bench,
    telephony_bench,
    tracing_bench,
    voice_bench,
)
from bench.report import RESULTS_DIR, Section, emit, write_results

log = logging.getLogger("bench")

QUICK_SEARCH_ROWS = 20_000
# Every benchmark, in the order a full run takes them.
GROUPS = (
    "system", "ws", "stream", "voice", "search", "pwa", "telephony", "tracing", "recovery",
    "soak",
)  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only",
        choices=GROUPS,
        default=None,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument(
        "--rows", type=int, default=None, help="search benchmark size (default 1,000,000)"
    )
    parser.add_argument(
        "--throughput-sessions", type=int, default=None, help="closed-loop sessions (200)"
    )
    parser.add_argument("--ws-sessions", type=int, default=None, help="paced sessions (1,000)")
    parser.add_argument("--sessions", type=int, default=None, help="soak sessions a round (200)")
    parser.add_argument("--seconds", type=float, default=None, help="soak round length (60 s)")
    return parser.parse_args(argv)


def raise_file_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit, inherited by every process started
    later: 1,000 sessions need 1,000 sockets in the gateway and in the generator."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit cannot be the soft one (the kernel caps it at nr_open).
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    log.info("open files limit: %d", resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # SystemExit unwinds the context managers, so every service and redis stop.
    raise SystemExit(128 + signum)


def run_search(rows: int, quick: bool) -> Section:
    out = RESULTS_DIR / "search.md"
    argv = ["--rows", str(rows), "--out", str(out)]
    if quick:
        argv += ["--queries", "20"]
    # search_bench prints its own table to stdout.
    search_bench.main(argv)
    command = f"python -m bench.search_bench {' '.join(argv)}"
    return Section("search", "", [], command=command, markdown=out.read_text(encoding="utf-8"))


def sizes_for(args: argparse.Namespace) -> system_bench.Sizes:
    sizes = system_bench.QUICK if args.quick else system_bench.FULL
    if args.throughput_sessions:
        sizes = dataclasses.replace(sizes, throughput_sessions=args.throughput_sessions)
    if args.ws_sessions:
        sizes = dataclasses.replace(sizes, ws_sessions=args.ws_sessions)
    return sizes


def soak_for(args: argparse.Namespace) -> soak_bench.Soak:
    soak = soak_bench.QUICK if args.quick else soak_bench.FULL
    given = {"sessions": args.sessions, "seconds": args.seconds}
    return dataclasses.replace(soak, **{name: n for name, n in given.items() if n})


def run(args: argparse.Namespace, command: str) -> list[Section]:
    sizes = sizes_for(args)
    groups = [args.only] if args.only else list(GROUPS)
    sections: list[Section] = []
    for group in groups:
        log.info("running %s benchmarks", group)
        if group == "search":
            rows = args.rows or (QUICK_SEARCH_ROWS if args.quick else 1_000_000)
            sections.append(run_search(rows, args.quick))
            continue
        if group == "voice":
            measured = voice_bench.run_voice(args.quick)
        elif group == "pwa":
            measured = pwa_bench.run_pwa(args.quick)
        elif group == "telephony":
            measured = telephony_bench.run_telephony(args.quick)
        elif group == "tracing":
            measured = tracing_bench.run_tracing(args.quick)
        elif group == "recovery":
            measured = recovery_bench.run_recovery(args.quick)
        elif group == "soak":
            measured = soak_bench.run_soak(soak_for(args))
        elif group == "system":
            measured = system_bench.run_system(sizes)
        elif group == "stream":
            measured = stream_bench.run_stream(sizes)
        else:
            measured = system_bench.run_ws(sizes)
        for section in measured:
            section.command = command
            emit(section.render())
        sections += measured
    return sections


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    # One line per /health poll of every starting service says nothing.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    command = " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)])
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    raise_file_limit()
    try:
        sections = run(args, command)
    except KeyboardInterrupt:
        log.error("interrupted: every process started has been stopped")
        return 130
    latest = write_results(sections, [command])
    log.info("results written to %s", latest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
