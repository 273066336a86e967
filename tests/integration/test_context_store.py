"""The conversation context on a real Redis: v1's keys, trimming, TTL, redelivery."""

import json
from datetime import UTC, datetime

from redis.asyncio import Redis

from services.responder.context import ContextStore
from shared.sessions import active_sessions
from shared.streams import Keys

AT = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)


async def _say(store: ContextStore, n: int, session: str = "s1", event: str | None = None) -> bool:
    return await store.record(
        session_id=session, event_id=event or f"e{n}", source="websocket",
        user=f"user {n}", agent=f"agent {n}", at=AT,
    )  # fmt: skip


async def test_context_keeps_the_last_five_exchanges(redis: Redis) -> None:
    store = ContextStore(redis, max_exchanges=5, ttl_s=1800)
    for n in range(8):
        assert await _say(store, n)
    context = await store.load("s1")
    assert [c.user for c in context] == [f"user {n}" for n in range(3, 8)]
    # v1's layout, readable by anything that read v1's keys.
    raw = json.loads(await redis.get(Keys.context("s1")) or b"[]")
    assert raw[-1] == {"timestamp": "2026-11-25T10:30:00Z", "user": "user 7", "agent": "agent 7"}


async def test_metadata_counts_exchanges_and_keys_expire(redis: Redis) -> None:
    store = ContextStore(redis, max_exchanges=5, ttl_s=1800)
    for n in range(3):
        await _say(store, n)
    meta = await store.metadata("s1")
    assert meta is not None
    assert meta.exchange_count == 3
    assert meta.source == "websocket"
    assert meta.created_at == meta.last_activity == "2026-11-25T10:30:00Z"
    for key in (Keys.context("s1"), Keys.metadata("s1")):
        assert 1790 < await redis.ttl(key) <= 1800


async def test_a_redelivered_utterance_is_recorded_once(redis: Redis) -> None:
    store = ContextStore(redis, max_exchanges=5, ttl_s=1800)
    assert await _say(store, 1, event="same")
    assert not await _say(store, 1, event="same")
    assert len(await store.load("s1")) == 1
    meta = await store.metadata("s1")
    assert meta is not None and meta.exchange_count == 1


async def test_active_sessions_index_and_end(redis: Redis) -> None:
    store = ContextStore(redis, max_exchanges=5, ttl_s=1800)
    await _say(store, 1, session="a")
    await _say(store, 2, session="b")
    count, ids = await active_sessions(redis, ttl_s=1800, max_ids=10)
    assert count == 2 and set(ids) == {"a", "b"}
    ended = await store.end("a")
    assert [c.user for c in ended] == ["user 1"]
    assert await store.load("a") == []
    assert await active_sessions(redis, ttl_s=1800, max_ids=10) == (1, ["b"])


async def test_sessions_older_than_the_ttl_are_not_active(redis: Redis) -> None:
    await redis.zadd(Keys.ACTIVE_SESSIONS, {"old": 1_000.0})
    assert await active_sessions(redis, ttl_s=1800, max_ids=10) == (0, [])
