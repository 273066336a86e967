"""A worker on a real Redis: its groups and subscribers come back after a flush, its
/health says when they are not there, and it gives up when it must, ending its real
process with status 70 for `make run`'s restarter to start it again."""

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis as sync_redis
import uvicorn
from faststream.redis import StreamSub
from redis.asyncio import Redis

from shared.process import EXIT_UNRECOVERABLE
from shared.settings import CommonSettings
from shared.worker import Worker
from tests.support.redis_server import free_port
from tests.support.services import ROOT, start_service
from tests.support.stack import eventually

STREAM = "test.supervised"
GROUP = "supervised"


class Running:
    def __init__(self, worker: Worker, port: int, seen: list[str]) -> None:
        self.worker = worker
        self.url = f"http://127.0.0.1:{port}/health"
        self.seen = seen

    async def health(self) -> tuple[int, dict[str, Any]]:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(self.url)
        return response.status_code, response.json()

    def subscriber(self) -> Any:
        (subscriber,) = self.worker.broker.subscribers
        return subscriber


@contextlib.asynccontextmanager
async def running_worker(redis_url: str, **overrides: Any) -> AsyncIterator[Running]:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "supervise_interval_s": 0.2,
        "reclaim_interval_s": 0.2,
        **overrides,
    }
    settings = CommonSettings(_env_file=None, **values)
    worker = Worker(settings, "supervised")
    seen: list[str] = []

    @worker.broker.subscriber(stream=StreamSub(STREAM, group=GROUP, consumer=settings.instance_id))
    async def handle(body: dict[str, str]) -> None:
        seen.append(body["n"])

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(worker.app(), host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, timeout=20)
    try:
        yield Running(worker, port, seen)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def publish(redis: Redis, worker: Worker, n: str) -> None:
    await worker.broker.publish({"n": n}, stream=STREAM)


async def test_a_flush_is_survived_and_health_tells_the_truth(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="shared.supervision")
    redis: Redis = Redis.from_url(redis_url)
    try:
        async with running_worker(redis_url) as run:
            status, body = await run.health()
            assert status == 200, body
            assert body["subscribers"] == [
                {"stream": STREAM, "group": GROUP, "running": True, "group_exists": True}
            ]
            await publish(redis, run.worker, "1")
            await eventually(lambda: run.seen == ["1"])

            # The subscriber meets NOGROUP and stops; within a few supervisor intervals
            # its group is back (from the start of the stream) and it consumes again.
            await redis.flushall()
            await publish(redis, run.worker, "2")
            await eventually(lambda: run.seen == ["1", "2"], timeout=10)
            messages = [r.getMessage() for r in caplog.records]
            assert any("was gone" in m and "created it again" in m for m in messages), messages
            assert any("had stopped; it consumes again" in m for m in messages), messages
            status, body = await run.health()
            assert status == 200, body
    finally:
        await redis.aclose()


async def test_health_is_503_while_a_subscriber_is_stopped(redis_url: str) -> None:
    async with running_worker(redis_url, supervise_interval_s=3600) as run:
        assert (await run.health())[0] == 200
        await run.subscriber().stop()
        status, body = await run.health()
        assert status == 503
        assert body["status"] == "degraded"
        assert body["subscribers"][0]["running"] is False


async def test_a_subscriber_that_cannot_start_again_ends_the_process(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_worker(redis_url, supervise_interval_s=3600) as run:
        reasons: list[str] = []
        supervisor = run.worker.supervisor
        monkeypatch.setattr(supervisor, "_give_up", reasons.append)
        subscriber = run.subscriber()
        await subscriber.stop()

        async def broken_start() -> None:
            raise RuntimeError("scripted start failure")

        monkeypatch.setattr(subscriber, "start", broken_start)
        for _ in range(5):
            await supervisor.check()
        assert reasons == [f"the subscriber of {STREAM!r} cannot be started again"]


# A real worker process whose subscribers cannot be started again: its Redis user
# has lost the right to run XGROUP (an ACL change) when Redis is flushed. The
# subscribers stop on NOGROUP; the supervisor cannot create the groups and skips
# its checks, so the test creates them as another user. The supervisor then finds
# the groups and starts the subscribers again, and each start (FastStream's) runs
# XGROUP CREATE, refused every time. A key of the wrong type under a stream's name
# would not do: XINFO fails on it as well, the supervisor takes that for Redis
# being away and never gets as far as restarting a subscriber.

WORKER_USER = "lva-test-worker"
GAVE_UP = "cannot be started again; exiting with status 70 so that the service is restarted"


def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not in {timeout} s: {what}")
        time.sleep(0.05)


@pytest.fixture
def admin(redis_url: str) -> Iterator[sync_redis.Redis]:
    """The test's own client, and a worker user that may do everything for now."""
    client = sync_redis.Redis.from_url(redis_url)
    client.acl_setuser(
        WORKER_USER,
        enabled=True,
        passwords="+secret",
        keys=["*"],
        channels=["*"],
        commands=["+@all"],
    )
    try:
        yield client
    finally:
        client.acl_deluser(WORKER_USER)
        client.close()


def as_worker_user(redis_url: str) -> str:
    parts = urlsplit(redis_url)
    return parts._replace(netloc=f"{WORKER_USER}:secret@{parts.netloc}").geturl()


def archiver_env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "REDIS_URL": as_worker_user(redis_url),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'archive.db'}",
        "SUPERVISE_INTERVAL_S": "0.2",
    }


def health_of(port: int) -> tuple[int, dict[str, Any]]:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    except httpx.HTTPError:
        return 0, {}
    return response.status_code, response.json()


def all_stopped(port: int) -> bool:
    _, body = health_of(port)
    return bool(body) and not any(s["running"] for s in body["subscribers"])


def make_subscribers_unstartable(admin: sync_redis.Redis, port: int) -> None:
    status, body = health_of(port)
    assert status == 200, body
    subscribers = body["subscribers"]
    assert subscribers, body
    admin.acl_setuser(WORKER_USER, enabled=True, commands=["-xgroup"])
    admin.flushall()
    until(lambda: all_stopped(port), 10, "every subscriber stopped on NOGROUP")
    for s in subscribers:
        admin.xgroup_create(s["stream"], s["group"], id="0", mkstream=True)


def test_a_worker_whose_subscriber_cannot_start_again_exits_with_status_70(
    admin: sync_redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    archiver = start_service("archiver", archiver_env(redis_url, tmp_path), tmp_path)
    try:
        make_subscribers_unstartable(admin, archiver.port)
        # Three failed starts a supervisor interval apart, then the server's shutdown.
        assert archiver.proc.wait(15) == EXIT_UNRECOVERABLE, archiver.logs()
    finally:
        archiver.stop()
    logs = archiver.logs()
    assert "could not be started again (3 of 3): " in logs, logs
    assert "no permissions to run the 'xgroup' command" in logs, logs
    assert GAVE_UP in logs, logs
    assert "Application shutdown complete" in logs, logs


def test_keep_running_starts_again_a_worker_that_gave_up(
    admin: sync_redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        **archiver_env(redis_url, tmp_path),
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "INFO",
        "HOST": "127.0.0.1",
        "HEALTH_PORT": str(port),
    }
    log_path = tmp_path / "keep_running.log"
    command = [sys.executable, "-m", "scripts.keep_running", "--"]
    with log_path.open("wb") as log_file:
        wrapper = subprocess.Popen(
            [*command, sys.executable, "-m", "services.archiver"],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        until(lambda: health_of(port)[0] == 200, 30, "the archiver is healthy")
        first = health_of(port)[1]["instance"]
        make_subscribers_unstartable(admin, port)
        until(lambda: GAVE_UP in log_path.read_text(errors="replace"), 15, "it gives up")
        until(
            lambda: "exited with status 70; starting it again" in log_path.read_text("utf-8"),
            15,
            "keep_running sees status 70",
        )
        # The operator gives the right back; the next run starts and is healthy.
        admin.acl_setuser(WORKER_USER, enabled=True, commands=["+xgroup"])
        until(
            lambda: (h := health_of(port))[0] == 200 and h[1]["instance"] != first,
            15,
            "a new archiver process is healthy",
        )
        wrapper.send_signal(signal.SIGTERM)
        assert wrapper.wait(20) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(wrapper.pid, signal.SIGKILL)
