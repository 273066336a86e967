"""Replies on a real Redis: they reach registered reply streams only, a late reply
never leaves behind a stream that nobody deletes, and the gateway's /health says
when its reply reader is not reading."""

import asyncio
import time
from typing import Any, cast

import httpx
import pytest
from faststream.redis.parser import BinaryMessageFormatV1
from redis.asyncio import Redis

from services.gateway.main import SERVICE
from shared import replies, tasks
from shared.broker import make_broker, redis_client
from shared.events import SummaryReply
from shared.replies import STALE_AFTER_S, ReplyRouter, ReplySender
from shared.settings import CommonSettings
from shared.streams import REPLY_STREAMS, reply_stream
from tests.support.gateway import gateway_in_process
from tests.support.stack import eventually


def settings(redis_url: str) -> CommonSettings:
    return CommonSettings(_env_file=None, redis_url=redis_url)


def reply(n: int = 1) -> SummaryReply:
    return SummaryReply(in_reply_to=f"event-{n}", session_id="s1", text=f"summary {n}")


async def test_a_registered_stream_gets_the_reply_in_the_brokers_format(
    redis: Redis, redis_url: str
) -> None:
    await redis.zadd(REPLY_STREAMS, {"replies.gateway.a": 1.0})
    sender = ReplySender(redis, settings(redis_url))
    assert await sender.send(reply(), "replies.gateway.a")
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange("replies.gateway.a"))
    ((_, fields),) = entries
    body, headers = BinaryMessageFormatV1.parse(fields[b"__data__"])
    assert SummaryReply.model_validate_json(body) == reply()
    assert headers["correlation_id"] == "event-1"
    assert await redis.ttl("replies.gateway.a") == -1


async def test_a_late_reply_to_a_stopped_instance_creates_nothing(
    redis: Redis, redis_url: str
) -> None:
    # Another instance is registered, the asker is not (it stopped and cleaned up).
    await redis.zadd(REPLY_STREAMS, {"replies.gateway.alive": 1.0})
    sender = ReplySender(redis, settings(redis_url))
    assert not await sender.send(reply(), "replies.gateway.gone")
    assert not await redis.exists("replies.gateway.gone")
    assert not await sender.send(reply(), None)


async def test_after_redis_lost_its_data_replies_still_arrive_and_cannot_outlive_their_owner(
    redis: Redis, redis_url: str
) -> None:
    # No registry at all (a flush): the reply is delivered, the stream it created
    # expires unless its instance registers again.
    sender = ReplySender(redis, settings(redis_url))
    assert await sender.send(reply(), "replies.gateway.flushed")
    assert await redis.xlen("replies.gateway.flushed") == 1
    assert 0 < await redis.ttl("replies.gateway.flushed") <= STALE_AFTER_S


async def test_the_owner_registers_again_and_keeps_its_stream(redis: Redis, redis_url: str) -> None:
    config = settings(redis_url)
    broker = make_broker(config, "gateway")
    own = redis_client(config)
    router = ReplyRouter(broker, own, config, "gateway")
    try:
        await router.start()
        assert await redis.zscore(REPLY_STREAMS, router.stream) is not None
        await redis.flushall()
        # A reply arrives while the registration is lost, then the heartbeat comes.
        assert await ReplySender(redis, config).send(reply(), router.stream)
        assert await redis.ttl(router.stream) > 0
        await router.beat()
        assert await redis.zscore(REPLY_STREAMS, router.stream) is not None
        assert await redis.ttl(router.stream) == -1
    finally:
        await router.stop()
        await own.aclose()
    assert not await redis.exists(router.stream)
    assert await redis.zscore(REPLY_STREAMS, router.stream) is None


async def test_a_late_reply_after_the_last_instance_stopped_creates_nothing(
    redis: Redis, redis_url: str
) -> None:
    """The registry outlives its last member, so a reply that comes once every
    instance has stopped is dropped, not taken for one written after a flush."""
    config = settings(redis_url)
    broker = make_broker(config, "gateway")
    own = redis_client(config)
    router = ReplyRouter(broker, own, config, "gateway")
    await router.start()
    await router.stop()
    await own.aclose()
    assert await redis.zscore(REPLY_STREAMS, router.stream) is None
    assert not await ReplySender(redis, config).send(reply(), router.stream)
    assert not await redis.exists(router.stream)


async def test_stopping_ends_the_reader_even_when_a_cancel_is_lost(
    redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = settings(redis_url)
    own = redis_client(config)
    router = ReplyRouter(make_broker(config, "gateway"), own, config, "gateway")
    real_xread = own.xread
    lost: list[bool] = []

    async def xread_losing_a_cancel(*args: Any, **kwargs: Any) -> Any:
        # What Python 3.11's asyncio.wait_for, inside redis-py's send, does to a
        # cancel that comes as the write completes: the command carries on.
        try:
            return await real_xread(*args, **kwargs)
        except asyncio.CancelledError:
            if lost:
                raise
            lost.append(True)
            return []

    monkeypatch.setattr(own, "xread", xread_losing_a_cancel)
    try:
        await router.start()
        await eventually(lambda: router.reader_state == "ok", timeout=5)
        # Not under a timeout: its cancel would reach the reader through stop()'s
        # await and end it, hiding a stop() that waits for ever.
        stopping = asyncio.create_task(router.stop())
        done, _ = await asyncio.wait({stopping}, timeout=tasks.STOP_TIMEOUT_S)
        assert stopping in done, "stop() still waits for a reader that lost its cancel"
        assert lost == [True]
        assert router.reader_state == "stopped"
        assert await redis.zscore(REPLY_STREAMS, router.stream) is None
    finally:
        for task in asyncio.all_tasks():
            if task.get_name() in ("reply-reader", "reply-heartbeat"):
                task.cancel()
        await own.aclose()


async def health_until(client: httpx.AsyncClient, status: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get("/health")
        if response.status_code == status:
            body: dict[str, Any] = response.json()
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"/health still {response.status_code}: {response.text}")
        await asyncio.sleep(0.1)


async def test_the_gateways_health_is_503_while_its_reply_reader_does_not_read(
    redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reader's proportions (stale after five reads' worth of blocking), sooner.
    monkeypatch.setattr(replies, "READ_BLOCK_MS", 200)
    monkeypatch.setattr(replies, "READER_STALE_S", 1.0)
    async with gateway_in_process(redis_url) as (app, client):
        body = await health_until(client, 200, timeout=5)
        assert (body["redis"], body["replies"]) == ("ok", "ok"), body

        # A string under the reply stream's name: every read fails with WRONGTYPE
        # while Redis itself answers, so no learner would get a reply.
        stream = reply_stream(SERVICE, app.state.settings.instance_id)
        await redis.set(stream, "clobbered")
        body = await health_until(client, 503, timeout=5)
        assert body["status"] == "degraded", body
        assert (body["redis"], body["replies"]) == ("ok", "reconnecting"), body

        await redis.delete(stream)
        body = await health_until(client, 200, timeout=5)
        assert body["replies"] == "ok", body

        (reader,) = [t for t in asyncio.all_tasks() if t.get_name() == "reply-reader"]
        # Cancelled as the router itself stops it: a single cancel can be lost
        # inside redis-py (see shared.tasks), and awaiting the reader would hang.
        await tasks.cancel_all([reader], "reply reader")
        assert reader.done()
        response = await client.get("/health")
        assert response.status_code == 503, response.text
        assert (response.json()["redis"], response.json()["replies"]) == ("ok", "stopped")
