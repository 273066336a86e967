"""Redis restarted or flushed under running services: every later message is answered.

Real processes on a real `redis-server` that the tests stop, start and flush; the
model and speech-to-text are the OpenAI wire server (echoing), so every answer says
which message it answers.
"""

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.support.load import Load
from tests.support.redis_server import RedisProcess, restartable_redis
from tests.support.services import ServiceProcess, running, start_service
from tests.support.stack import (
    all_healthy,
    archived,
    base_env,
    clip_b64,
    eventually,
    health,
    ws_ask,
    ws_session,
    ws_url,
)
from tests.wire.openai_server import OpenAIWireServer

log = logging.getLogger(__name__)

WORKERS = ["archiver", "responder", "transcriber"]
SESSIONS = 10
# How long a test waits for one answer: the reply deadline plus a little.
ANSWER_TIMEOUT_S = 25.0


@pytest.fixture(scope="module")
def llm() -> Iterator[OpenAIWireServer]:
    with OpenAIWireServer() as server:
        server.echo = True
        yield server


def stack_env(redis_url: str, llm: OpenAIWireServer, db: Path) -> dict[str, str]:
    return {
        **base_env(redis_url, llm, db),
        "REPLY_TIMEOUT": "20",
        "SUPERVISE_INTERVAL_S": "0.5",
    }


@contextlib.asynccontextmanager
async def stack(
    server: RedisProcess, llm: OpenAIWireServer, tmp_path: Path
) -> AsyncIterator[dict[str, ServiceProcess]]:
    env = stack_env(server.url, llm, tmp_path / "archive.db")
    with running([*WORKERS, "gateway"], env, tmp_path) as services:
        yield services


def answered(answers: list[dict[str, Any]], texts: list[str]) -> int:
    """How many answers are the echoed reply to the message they answer."""
    return sum(
        a.get("type") == "response" and a.get("user_text") == t and t in a.get("agent_text", "")
        for a, t in zip(answers, texts, strict=True)
    )


async def round_of_messages(gateway: ServiceProcess, tag: str, per_session: int = 3) -> None:
    """SESSIONS WebSockets at once, each saying `per_session` messages; all answered."""
    texts = {
        s: [f"{tag} session {s} message {n}" for n in range(per_session)] for s in range(SESSIONS)
    }
    results = await asyncio.gather(
        *(ws_session(gateway, f"{tag}-{s}", texts[s], ANSWER_TIMEOUT_S) for s in range(SESSIONS))
    )
    got = sum(answered(r, texts[s]) for s, r in enumerate(results))
    expected = SESSIONS * per_session
    print(f"{tag}: {got} of {expected} messages answered")  # noqa: T201 - the counts, for the log
    assert got == expected, [a for r in results for a in r if a.get("type") != "response"]


async def test_a_redis_restart_with_aof_under_load_loses_no_later_message(
    llm: OpenAIWireServer, tmp_path: Path
) -> None:
    with restartable_redis(appendonly=True) as server:
        async with stack(server, llm, tmp_path) as services:
            gateway = services["gateway"]
            await round_of_messages(gateway, "before")
            load = Load(gateway, sessions=5, pause_s=0.1, answer_timeout=ANSWER_TIMEOUT_S)
            load.start()
            await asyncio.sleep(1.0)
            server.stop()
            await asyncio.sleep(1.0)
            server.start()
            await all_healthy(list(services.values()))
            await asyncio.sleep(1.0)
            counts = await load.stop()
            print(f"during the restart: {counts}")  # noqa: T201
            # In flight while Redis was away: answered, or a clear error; never silence.
            assert counts.get("no answer", 0) == 0, counts
            assert counts.get("answered", 0) > 0, counts
            await round_of_messages(gateway, "after")
            for service in services.values():
                assert "Traceback" not in service.logs(), service.name


async def test_workers_resume_after_a_flush_and_after_an_empty_restart(
    llm: OpenAIWireServer, tmp_path: Path
) -> None:
    db = tmp_path / "archive.db"
    with restartable_redis(appendonly=False) as server:
        async with stack(server, llm, tmp_path) as services:
            gateway = services["gateway"]
            workers = [services[name] for name in WORKERS]
            await round_of_messages(gateway, "before")
            await voice_round(gateway, "before")

            # FLUSHALL under a light load: the groups vanish under the subscribers.
            load = Load(gateway, sessions=2, pause_s=0.2, answer_timeout=ANSWER_TIMEOUT_S)
            load.start()
            await asyncio.sleep(0.5)
            server.server().flush()
            await asyncio.sleep(2.0)
            print(f"during the flush: {await load.stop()}")  # noqa: T201
            await all_healthy(workers)
            for worker in workers:
                assert "created it again" in worker.logs(), worker.name
            await round_of_messages(gateway, "after-flush")
            await voice_round(gateway, "after-flush")

            # A restart of a Redis that keeps nothing: /health says so while it is away.
            server.stop()
            await eventually(lambda: all(health(s) == 503 for s in services.values()), 15)
            server.start()
            await all_healthy(list(services.values()))
            await round_of_messages(gateway, "after-restart")
            await voice_round(gateway, "after-restart")

            def archived_round(tag: str) -> int:
                return sum(1 for session, _, _ in archived(db) if session.startswith(f"{tag}-"))

            await eventually(lambda: archived_round("after-restart") == SESSIONS * 3 + 1)
            assert archived_round("after-flush") == SESSIONS * 3 + 1


async def voice_round(gateway: ServiceProcess, tag: str) -> None:
    """A clip through the transcriber (the wire server hears its default sentence)."""
    async with websockets.connect(ws_url(gateway, f"{tag}-voice"), max_size=None) as ws:
        answer = await ws_ask(
            ws, {"type": "audio", "audio": clip_b64("sentence1.ogg")}, ANSWER_TIMEOUT_S
        )
    assert answer["type"] == "response", answer
    assert answer["user_text"] == "Why do leaves change colour in the autumn?"


async def test_requests_while_redis_is_down_get_503_and_the_connection_stays_usable(
    llm: OpenAIWireServer, tmp_path: Path
) -> None:
    with restartable_redis(appendonly=True) as server:
        env = {**stack_env(server.url, llm, tmp_path / "archive.db"), "REDIS_RETRIES": "3"}
        with running(["archiver", "responder", "gateway"], env, tmp_path) as services:
            gateway = services["gateway"]
            async with (
                httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client,
                websockets.connect(ws_url(gateway, "outage")) as ws,
            ):
                server.stop()
                started = time.monotonic()
                response = await client.post(
                    "/api/conversation", json={"session_id": "outage", "text": "hello?"}
                )
                assert response.status_code == 503, response.text
                assert response.json()["code"] == "unavailable"
                assert "try again" in response.json()["detail"]
                # Refused once Redis's retries ran out, well before the reply deadline.
                assert time.monotonic() - started < 20
                stats = await client.get("/api/stats")
                assert stats.status_code == 503 and stats.json()["code"] == "unavailable"
                answer = await ws_ask(ws, {"type": "text", "text": "anyone there?"}, 25)
                assert answer == {
                    "type": "error",
                    "code": "unavailable",
                    "message": answer["message"],
                }
                server.start()
                await all_healthy(list(services.values()))
                answer = await ws_ask(ws, {"type": "text", "text": "back again"}, 25)
                assert answer["type"] == "response" and "back again" in answer["agent_text"]
                response = await client.post(
                    "/api/conversation", json={"session_id": "outage", "text": "and REST"}
                )
                assert response.status_code == 200, response.text


async def test_a_cancel_while_redis_is_down_is_refused_and_the_connection_stays(
    tmp_path: Path,
) -> None:
    """No responder: the message stays in the works while Redis goes away, and the
    learner's cancel of it cannot reach Redis."""
    with restartable_redis(appendonly=True) as server:
        env = {"REDIS_URL": server.url, "REPLY_TIMEOUT": "30", "REDIS_RETRIES": "3"}
        gateway = start_service("gateway", env, tmp_path)
        try:
            async with websockets.connect(ws_url(gateway, "cancel-outage")) as ws:
                await ws.send(json.dumps({"type": "text", "text": "hello", "id": "m1"}))
                await asyncio.sleep(0.5)
                server.stop()
                answer = await ws_ask(ws, {"type": "cancel"}, 25)
                assert answer["type"] == "error" and answer["code"] == "unavailable"
                assert await ws_ask(ws, {"type": "ping"}, 10) == {"type": "pong"}
        finally:
            server.start()
            gateway.stop()


def test_the_restartable_server_keeps_data_only_with_aof() -> None:
    for appendonly in (True, False):
        with restartable_redis(appendonly=appendonly) as server:
            with server.server().client() as client:
                client.set("kept", "1")
            server.stop()
            server.start()
            with server.server().client() as client:
                assert (client.get("kept") == b"1") is appendonly
