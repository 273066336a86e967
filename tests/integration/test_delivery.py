"""Delivery on real Redis with real processes: work expires with its asker, and a slow
but live consumer keeps the work it holds."""

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import httpx
import pytest
import redis
import redis.asyncio

from shared.delivery import Leases, Reclaimer
from shared.settings import CommonSettings
from shared.streams import DEAD_LETTERS
from tests.support.services import start_service
from tests.support.stack import archived, base_env, converse, eventually
from tests.wire.openai_server import OpenAIWireServer


@pytest.fixture
def llm() -> Iterator[OpenAIWireServer]:
    with OpenAIWireServer() as server:
        server.echo = True
        yield server


async def test_a_backlog_of_expired_utterances_drains_without_calling_the_model(
    redis_url: str, llm: OpenAIWireServer, tmp_path: Path
) -> None:
    db = tmp_path / "archive.db"
    env = base_env(redis_url, llm, db)
    archiver = start_service("archiver", env, tmp_path)
    impatient = start_service("gateway", {**env, "REPLY_TIMEOUT": "1"}, tmp_path)
    gateway = start_service("gateway", env, tmp_path)
    responder = None
    try:
        # No responder yet: every message waits past its deadline and gets a 504.
        async with httpx.AsyncClient(base_url=impatient.base_url, timeout=30) as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        "/api/conversation",
                        json={"session_id": "backlog", "text": f"thought number {n}"},
                    )
                    for n in range(20)
                )
            )
        assert {a.status_code for a in answers} == {504}
        responder = start_service("responder", env, tmp_path)
        # The backlog is archived (nothing the learner said is lost) but unanswered.
        await eventually(lambda: len(archived(db)) == 20)
        assert len(llm.requests) == 0, "the model was asked for answers nobody would read"
        assert all(meta.get("expired") is True for _, _, meta in archived(db))
        assert {text for _, text, _ in archived(db)} == {f"thought number {n}" for n in range(20)}
        # A message that is still awaited is answered as usual.
        reply = await converse(gateway, "fresh", "a new thought")
        assert "a new thought" in reply["agent_text"]
        assert len(llm.requests) == 1
    finally:
        for service in (gateway, impatient, responder, archiver):
            if service is not None:
                service.stop()


async def test_a_slow_live_responder_keeps_its_message_and_answers_it_once(
    redis_url: str, llm: OpenAIWireServer, tmp_path: Path
) -> None:
    """Scaled down from the 70 s model call with RECLAIM_IDLE_MS at 60 s: a call of 7 s
    with 2 s, and a message dead-lettered at its second failed delivery."""
    db = tmp_path / "archive.db"
    env = {
        **base_env(redis_url, llm, db),
        "RECLAIM_IDLE_MS": "2000",
        "RECLAIM_INTERVAL_S": "0.5",
        "MAX_DELIVERIES": "2",
        "LLM_TIMEOUT": "30",
    }
    services = [
        start_service("archiver", env, tmp_path),
        start_service("responder", env, tmp_path, label="responder-a"),
        start_service("responder", env, tmp_path, label="responder-b"),
        start_service("gateway", env, tmp_path),
    ]
    try:
        llm.delay = 7.0
        reply = await converse(services[-1], "slow", "take your time")
        assert "take your time" in reply["agent_text"]
        await eventually(lambda: len(archived(db)) == 1)
        await asyncio.sleep(1.0)
        # Asked once: no replica took the message from the one working on it.
        assert len(llm.requests) == 1
        assert len(archived(db)) == 1
        with redis.Redis.from_url(redis_url) as client:
            assert client.xlen(DEAD_LETTERS) == 0
        for service in services:
            assert "not acknowledged in time" not in service.logs(), service.name
    finally:
        for service in reversed(services):
            service.stop()


async def test_an_entry_held_past_max_hold_is_left_to_be_reclaimed(redis_url: str) -> None:
    """A live consumer renews what it holds, but not for ever: a handler stuck past
    MAX_HOLD_S no longer keeps its message, which is then reclaimed."""
    client = redis.asyncio.Redis.from_url(redis_url)
    settings = CommonSettings(
        _env_file=None, redis_url=redis_url, instance_id="stuck", reclaim_idle_ms=100
    )
    try:
        await client.xgroup_create("work", "workers", id="0", mkstream=True)
        await client.xadd("work", {"n": "1"})
        await client.xreadgroup("workers", "stuck", {"work": ">"}, count=1)
        leases = Leases(max_hold_s=0.5)
        reclaimer = Reclaimer(client, settings, stream="work", group="workers", leases=leases)
        await asyncio.sleep(0.2)
        # Held and renewed: not idle, so not reclaimed.
        await reclaimer.tick()
        assert await client.xlen("work") == 1
        await asyncio.sleep(0.5)
        # Held too long: no longer renewed, idle past RECLAIM_IDLE_MS, delivered again.
        await reclaimer.tick()
        await asyncio.sleep(0.2)
        await reclaimer.tick()
        assert await client.xlen("work") == 2
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await client.xrange("work"))
        assert entries[-1][1][b"lva-failed"] == b"1"
    finally:
        await client.aclose()
