"""Replies on a real Redis: they reach registered reply streams only, and a late reply
never leaves behind a stream that nobody deletes."""

from typing import cast

from faststream.redis.parser import BinaryMessageFormatV1
from redis.asyncio import Redis

from shared.broker import make_broker, redis_client
from shared.events import SummaryReply
from shared.replies import STALE_AFTER_S, ReplyRouter, ReplySender
from shared.settings import CommonSettings
from shared.streams import REPLY_STREAMS


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
