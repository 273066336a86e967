"""The archiver as a real process on a real Redis: call events meet their exchanges
in whichever order they come, and the call.events group is supervised like the others."""

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from faststream.redis import RedisBroker
from redis.asyncio import Redis

from services.archiver.repository import Archive
from shared import dead_letters
from shared.broker import make_broker
from shared.events import CallRecorded, ExchangeCompleted, ReplyInterrupted
from shared.settings import CommonSettings
from shared.streams import CALL_EVENTS, EXCHANGE_COMPLETED, Groups
from tests.support.services import ServiceProcess, start_service
from tests.support.stack import eventually

CALL = "twilio_CAfeedface"
WRITTEN = "Photosynthesis turns light into sugar. Chlorophyll absorbs the red light."
HEARD = "Photosynthesis turns light"


@pytest.fixture
def archiver(redis_url: str, tmp_path: Path) -> Iterator[ServiceProcess]:
    env = {
        "REDIS_URL": redis_url,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'archive.db'}",
        "SUPERVISE_INTERVAL_S": "0.5",
        "RECLAIM_IDLE_MS": "1500",
        "RECLAIM_INTERVAL_S": "0.5",
    }
    service = start_service("archiver", env, tmp_path)
    yield service
    service.stop()


@pytest.fixture
async def broker(redis_url: str) -> AsyncIterator[RedisBroker]:
    """A publisher of its own, as telephony and the responder are."""
    async with make_broker(CommonSettings(_env_file=None, redis_url=redis_url), "test") as opened:
        yield opened


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def exchange(event_id: str) -> ExchangeCompleted:
    return ExchangeCompleted(
        event_id=event_id,
        session_id=CALL,
        source="twilio",
        user_text="how do plants eat?",
        agent_text=WRITTEN,
        intent="question",
        input="audio",
    )


async def call_events_subscriber(service: ServiceProcess) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as client:
        body = (await client.get(f"{service.base_url}/health")).json()
    (subscriber,) = [s for s in body["subscribers"] if s["stream"] == CALL_EVENTS]
    return cast(dict[str, Any], subscriber)


async def test_a_reply_cut_before_its_exchange_arrives_is_archived_cut(
    archiver: ServiceProcess, broker: RedisBroker, redis: Redis, tmp_path: Path
) -> None:
    db = tmp_path / "archive.db"
    assert await call_events_subscriber(archiver) == {
        "stream": CALL_EVENTS,
        "group": Groups.ARCHIVER,
        "running": True,
        "group_exists": True,
    }
    # An unreadable entry goes to the dead letters; the rest of the stream is read.
    await broker.publish({"kind": "interrupted"}, stream=CALL_EVENTS)
    cut = ReplyInterrupted(
        session_id=CALL, source="twilio", in_reply_to="utt-1", heard_text=HEARD, heard_ms=2100
    )
    await broker.publish(cut, stream=CALL_EVENTS)
    await eventually(lambda: bool(rows(db, "SELECT 1 FROM heard")))

    await broker.publish(exchange("utt-1"), stream=EXCHANGE_COMPLETED)
    await eventually(lambda: bool(rows(db, "SELECT 1 FROM captures")))
    ((agent_text, metadata),) = rows(db, "SELECT agent_text, metadata FROM captures")
    assert agent_text == HEARD
    assert json.loads(metadata)["interrupted"] == {"heard_ms": 2100, "written_text": WRITTEN}

    (letter,) = await dead_letters.listing(redis)
    assert json.loads(letter.body) == {"kind": "interrupted"}
    assert (letter.stream, letter.group) == (CALL_EVENTS, Groups.ARCHIVER)
    assert letter.reason is not None and "validation error" in letter.reason
    assert await dead_letters.counts(redis) == {CALL_EVENTS: 1}


async def test_call_events_are_read_again_after_redis_is_flushed(
    archiver: ServiceProcess, broker: RedisBroker, redis: Redis, tmp_path: Path
) -> None:
    db = tmp_path / "archive.db"
    await broker.publish(exchange("utt-1"), stream=EXCHANGE_COMPLETED)
    await eventually(lambda: bool(rows(db, "SELECT 1 FROM captures")))

    await redis.flushall()
    # Published while the group is gone: it is created again from the stream's start.
    recording = CallRecorded(
        session_id=CALL,
        source="twilio",
        recording_sid="RE1",
        recording_url="https://api.twilio.com/2010-04-01/Accounts/AC1/Recordings/RE1",
        duration_s=31,
    )
    await broker.publish(recording, stream=CALL_EVENTS)
    await eventually(lambda: bool(rows(db, "SELECT 1 FROM recordings")), timeout=15)
    ((metadata,),) = rows(db, "SELECT metadata FROM captures")
    assert json.loads(metadata)["recordings"] == [
        {"sid": "RE1", "url": recording.recording_url, "duration_s": 31}
    ]
    assert (await call_events_subscriber(archiver))["group_exists"] is True


async def test_an_archiver_killed_after_or_before_its_commit_stores_each_exchange_once(
    broker: RedisBroker, redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    """The state a `kill -9` leaves, set up exactly: three exchanges pending for a
    consumer that is gone, two of them committed to the archive (killed between the
    commit and the acknowledgement), the third not (killed before the commit)."""
    db = tmp_path / "archive.db"
    await redis.xgroup_create(EXCHANGE_COMPLETED, Groups.ARCHIVER, id="0", mkstream=True)
    exchanges = [exchange(f"killed-{n}") for n in range(3)]
    for one in exchanges:
        await broker.publish(one, stream=EXCHANGE_COMPLETED)
    await redis.xreadgroup(Groups.ARCHIVER, "killed", {EXCHANGE_COMPLETED: ">"}, count=3)
    async with Archive(db) as archive:
        assert await archive.save_many(exchanges[:2]) == 2

    env = {
        "REDIS_URL": redis_url,
        "DATABASE_URL": f"sqlite:///{db}",
        "RECLAIM_IDLE_MS": "1000",
        "RECLAIM_INTERVAL_S": "0.3",
    }
    service = start_service("archiver", env, tmp_path, label="archiver-after-kill")
    try:
        await eventually(lambda: len(rows(db, "SELECT 1 FROM captures")) == 3)
        # Every redelivery acknowledged: none left to store again later.
        for _ in range(100):
            if not (await redis.xpending(EXCHANGE_COMPLETED, Groups.ARCHIVER))["pending"]:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("redeliveries left unacknowledged")
        found = rows(db, "SELECT event_id, count(*) FROM captures GROUP BY event_id")
        assert sorted(found) == [(f"killed-{n}", 1) for n in range(3)]
    finally:
        service.stop()
