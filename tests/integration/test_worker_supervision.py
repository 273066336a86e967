"""A worker in this process on a real Redis: its groups and subscribers come back after
a flush, its /health says when they are not there, and it gives up when it must."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from faststream.redis import StreamSub
from redis.asyncio import Redis

from shared.settings import CommonSettings
from shared.worker import Worker
from tests.support.redis_server import free_port
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
