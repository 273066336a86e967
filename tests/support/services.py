"""Services as real processes for integration and end-to-end tests."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
HEALTH_PORT_VAR = {
    "gateway": "PORT",
    "transcriber": "HEALTH_PORT",
    "responder": "HEALTH_PORT",
    "archiver": "HEALTH_PORT",
    "telephony": "TELEPHONY_PORT",
}


@dataclass
class ServiceProcess:
    name: str
    port: int
    proc: "subprocess.Popen[bytes]"
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


def start_service(
    name: str,
    env: Mapping[str, str],
    log_dir: Path,
    *,
    timeout: float = 120.0,
    label: str | None = None,
    port: int | None = None,
    ready_path: str = "/health",
) -> ServiceProcess:
    """Start `python -m services.<name>` and return once its /health answers
    (on `port`, to come back where a client knew it, or on a free one); or
    `ready_path`, such as /health/live for a service meant to start unready."""
    port = port or free_port()
    full_env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "INFO",
        "HOST": "127.0.0.1",
        **env,
        HEALTH_PORT_VAR[name]: str(port),
    }
    log_path = log_dir / f"{label or name}-{port}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            env=full_env,
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    service = ServiceProcess(name, port, proc, log_path, dict(env))
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{service.logs()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{service.base_url}{ready_path}", timeout=1.0).status_code < 300:
                return service
        if time.monotonic() > deadline:
            service.kill()
            raise RuntimeError(f"{name} not healthy after {timeout} s:\n{service.logs()}")
        time.sleep(0.1)


@contextlib.contextmanager
def running(
    names: list[str], env: Mapping[str, str], log_dir: Path
) -> Iterator[dict[str, ServiceProcess]]:
    """Start services in order; stop them all, newest first, on exit."""
    started: dict[str, ServiceProcess] = {}
    try:
        for name in names:
            started[name] = start_service(name, env, log_dir)
        yield started
    finally:
        for service in reversed(list(started.values())):
            service.stop()
