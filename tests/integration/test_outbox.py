"""The outbox on a real Redis that is flushed, read and restarted: what no consumer
had read is published again, what a group read is forgotten, and a restart that
lost the last writes (an older snapshot loaded) has them published again."""

from collections.abc import AsyncIterator
from typing import cast

import pytest
from pydantic import BaseModel
from redis.asyncio import Redis

from shared.broker import wait_for_redis
from shared.outbox import Outbox
from tests.support.redis_server import RedisProcess, restartable_redis

STREAM = "work"
GROUP = "workers"


class Note(BaseModel):
    text: str


@pytest.fixture
async def server() -> AsyncIterator[RedisProcess]:
    # No AOF: a restart loads the last snapshot (SAVE), like a crash that lost writes.
    with restartable_redis(appendonly=False) as process:
        yield process


@pytest.fixture
async def redis(server: RedisProcess) -> AsyncIterator[Redis]:
    client = Redis.from_url(server.url)
    yield client
    await client.aclose()


async def make_outbox(redis: Redis) -> Outbox:
    async def publish(stream: str, message: BaseModel) -> bytes:
        return cast(bytes, await redis.xadd(stream, {"data": message.model_dump_json()}))

    outbox = Outbox(redis, publish, window_s=60)
    await outbox.start()
    return outbox


async def texts(redis: Redis) -> list[str]:
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(STREAM))
    return [Note.model_validate_json(fields[b"data"]).text for _, fields in entries]


async def test_what_a_group_read_is_forgotten_and_the_rest_sent_again_after_a_flush(
    redis: Redis,
) -> None:
    await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    outbox = await make_outbox(redis)
    for text in ("one", "two", "three"):
        await outbox.publish(STREAM, Note(text=text))
    await redis.xreadgroup(GROUP, "reader", {STREAM: ">"}, count=1)
    assert await outbox.tick() == 0
    assert len(outbox) == 2  # "one" was read: its reader holds it

    await redis.flushall()
    assert await outbox.tick() == 2
    assert await texts(redis) == ["two", "three"]
    # Published again, they are kept again until read.
    assert len(outbox) == 2
    assert await outbox.tick() == 0


async def test_a_restart_that_lost_the_last_writes_has_them_published_again(
    server: RedisProcess, redis: Redis
) -> None:
    await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    outbox = await make_outbox(redis)
    await outbox.publish(STREAM, Note(text="saved"))
    await redis.save()
    await outbox.publish(STREAM, Note(text="after the snapshot"))

    server.stop()  # without saving: the snapshot of before comes back
    server.start()
    await wait_for_redis(server.url, 10)
    assert await texts(redis) == ["saved"]
    assert await outbox.tick() == 1
    assert await texts(redis) == ["saved", "after the snapshot"]
    assert await outbox.tick() == 0
