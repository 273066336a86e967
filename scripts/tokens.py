"""Credentials for the gateway's AUTH_MODE=token: JWTs for learners, API keys for
scripts, and taking either back.

    .venv/bin/python -m scripts.tokens issue --learner ada [--hours 24] [--admin]
    .venv/bin/python -m scripts.tokens api-key --learner ada [--label laptop] [--admin]
    .venv/bin/python -m scripts.tokens list
    .venv/bin/python -m scripts.tokens revoke <API key, its id from `list`, or a JWT>

`issue` and `api-key` print the new credential as their last line (and nothing
else on standard output before it but a note of what it is), for `| tail -1`.
`issue` signs with AUTH_SECRET and needs no Redis; `api-key` keeps only the key's
SHA-256 in Redis, so it is shown this once. `revoke` takes an API key back at once;
a JWT (by its `jti`) is refused from then on until it would have expired anyway.
AUTH_SECRET and REDIS_URL come from the environment or .env, as the gateway reads them.
"""

import argparse
import asyncio
import json
import re
import sys
from datetime import timedelta

from redis.asyncio import Redis

from services.gateway import auth
from services.gateway.settings import GatewaySettings, secret_refusal
from services.gateway.tokens import AuthError, is_api_key, issue_jwt, new_api_key, verify_jwt
from shared.broker import redis_client
from shared.events import LEARNER_PATTERN


def _learner(value: str) -> str:
    if not re.fullmatch(LEARNER_PATTERN, value):
        raise argparse.ArgumentTypeError(f"a learner id matches {LEARNER_PATTERN}")
    return value


def _hours(value: str) -> float:
    hours = float(value)
    if not hours > 0:
        raise argparse.ArgumentTypeError("a lifetime is more than 0 hours")
    return hours


def _secret(settings: GatewaySettings) -> str | None:
    problem = secret_refusal(settings)
    if problem is not None:
        sys.stderr.write(f"cannot sign tokens: {problem}\n")
        return None
    assert settings.auth_secret is not None
    return settings.auth_secret.get_secret_value()


def issue(args: argparse.Namespace, settings: GatewaySettings) -> int:
    secret = _secret(settings)
    if secret is None:
        return 2
    token = issue_jwt(secret, args.learner, lifetime=timedelta(hours=args.hours), admin=args.admin)
    scope = ", admin" if args.admin else ""
    sys.stdout.write(f"# JWT for learner {args.learner!r}{scope}, valid {args.hours:g} h\n")
    sys.stdout.write(token + "\n")
    return 0


async def run(args: argparse.Namespace, settings: GatewaySettings) -> int:
    out = sys.stdout
    if args.command == "issue":
        return issue(args, settings)
    redis = redis_client(settings)
    try:
        if args.command == "api-key":
            key = new_api_key()
            await auth.store_api_key(redis, key, args.learner, label=args.label, admin=args.admin)
            note = "shown once: only its hash is kept"
            out.write(f"# API key for learner {args.learner!r} ({note})\n")
            out.write(key + "\n")
            return 0
        if args.command == "list":
            for listing in await auth.list_api_keys(redis):
                out.write(listing.model_dump_json() + "\n")
            return 0
        return await revoke(redis, args.credential, settings)
    finally:
        await redis.aclose()


async def revoke(redis: Redis, credential: str, settings: GatewaySettings) -> int:
    credential = credential.strip()
    if is_api_key(credential) or re.fullmatch(r"[0-9a-f]{8,64}", credential):
        record = await auth.revoke_api_key(redis, credential)
        if record is None:
            sys.stderr.write("no such API key (or an id that names more than one)\n")
            return 1
        sys.stdout.write(json.dumps({"revoked": "api_key", "learner": record.learner}) + "\n")
        return 0
    secret = _secret(settings)
    if secret is None:
        return 2
    try:
        # An expired token needs no revoking, but is no error either.
        claims = verify_jwt(credential, secret, leeway=settings.auth_clock_skew_s, verify_exp=False)
    except AuthError as exc:
        sys.stderr.write(f"not a token of this gateway: {exc.reason}\n")
        return 1
    if not await auth.revoke_jwt(redis, claims, leeway=settings.auth_clock_skew_s):
        sys.stderr.write("this token has no `jti`: it cannot be revoked (change AUTH_SECRET)\n")
        return 1
    sys.stdout.write(json.dumps({"revoked": "jwt", "learner": claims.learner}) + "\n")
    return 0


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="python -m scripts.tokens", description="The gateway's bearer credentials."
    )
    commands = main.add_subparsers(dest="command", required=True)
    issuing = commands.add_parser("issue", help="print a new JWT for a learner")
    issuing.add_argument("--hours", type=_hours, default=24.0, help="lifetime (24)")
    keying = commands.add_parser("api-key", help="create an API key for a learner's scripts")
    keying.add_argument("--label", default="", help="what it is for, shown by `list`")
    for sub in (issuing, keying):
        sub.add_argument("--learner", required=True, type=_learner, help="the learner id")
        sub.add_argument("--admin", action="store_true", help="may see everyone's stats")
    commands.add_parser("list", help="the API keys (learner, label, id; never the key)")
    revoking = commands.add_parser("revoke", help="take back an API key or a JWT")
    revoking.add_argument("credential", help="the API key, its id from `list`, or the JWT")
    return main


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    sys.exit(asyncio.run(run(args, GatewaySettings())))


if __name__ == "__main__":
    main()
