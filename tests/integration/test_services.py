"""Services as real processes on a real Redis: work sharing, reply routing, recovery."""

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.services import ServiceProcess, start_service
from tests.wire.openai_server import OpenAIWireServer


@pytest.fixture(scope="module")
def llm() -> Iterator[OpenAIWireServer]:
    with OpenAIWireServer() as server:
        yield server


@pytest.fixture
def llm_echo(llm: OpenAIWireServer) -> OpenAIWireServer:
    llm.reset()
    llm.echo = True
    return llm


def base_env(redis_url: str, llm: OpenAIWireServer, db: Path) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "LLM_PROVIDER": "openai",
        "LLM_BASE_URL": llm.base_url,
        "LLM_MAX_RETRIES": "0",
        "DATABASE_URL": f"sqlite:///{db}",
        "REPLY_TIMEOUT": "60",
        "RECLAIM_IDLE_MS": "1500",
        "RECLAIM_INTERVAL_S": "0.5",
    }


def archived(db: Path) -> list[tuple[str, str, dict[str, str]]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT session_id, user_text, metadata FROM captures").fetchall()
    return [(s, u, json.loads(m)) for s, u, m in rows]


async def eventually(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


async def converse(gateway: ServiceProcess, session: str, text: str) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=90) as client:
        response = await client.post(
            "/api/conversation", json={"session_id": session, "text": text}
        )
    assert response.status_code == 200, response.text
    return dict(response.json())


def stop_all(services: list[ServiceProcess]) -> None:
    for service in services:
        service.stop()


async def test_two_responders_share_work_and_replies_reach_the_right_gateway(
    redis_url: str, llm_echo: OpenAIWireServer, tmp_path: Path
) -> None:
    db = tmp_path / "archive.db"
    env = base_env(redis_url, llm_echo, db)
    services = [
        start_service("archiver", env, tmp_path),
        start_service("responder", env, tmp_path, label="responder-a"),
        start_service("responder", env, tmp_path, label="responder-b"),
    ]
    gateways = [
        start_service("gateway", env, tmp_path, label="gateway-a"),
        start_service("gateway", env, tmp_path, label="gateway-b"),
    ]
    try:
        jobs = [
            converse(gateways[n % 2], f"session-{n % 5}", f"message number {n}") for n in range(40)
        ]
        replies = await asyncio.gather(*jobs)
        # Each reply answers its own request: a reply sent to the other gateway
        # would have timed out instead.
        for n, reply in enumerate(replies):
            assert reply["user_text"] == f"message number {n}"
            assert f"message number {n}" in reply["agent_text"]
        await eventually(lambda: len(archived(db)) == 40)
        responders = {meta["responder"] for _, _, meta in archived(db)}
        assert len(responders) == 2, "both responder replicas should have taken messages"
    finally:
        stop_all(gateways + services)


async def test_a_message_held_by_a_killed_responder_is_answered_by_another(
    redis_url: str, llm_echo: OpenAIWireServer, tmp_path: Path
) -> None:
    db = tmp_path / "archive.db"
    env = base_env(redis_url, llm_echo, db)
    archiver = start_service("archiver", env, tmp_path)
    doomed = start_service("responder", env, tmp_path, label="responder-doomed")
    gateway = start_service("gateway", env, tmp_path)
    survivor: ServiceProcess | None = None
    try:
        llm_echo.delay = 3.0  # the doomed responder is mid-call when it dies
        request = asyncio.create_task(converse(gateway, "s-recover", "remember this thought"))
        await eventually(lambda: len(llm_echo.requests) == 1, timeout=10)
        doomed.kill()
        llm_echo.delay = 0.0
        survivor = start_service("responder", env, tmp_path, label="responder-survivor")
        reply = await request
        assert "remember this thought" in reply["agent_text"]
        await eventually(lambda: len(archived(db)) == 1)
        assert archived(db)[0][1] == "remember this thought"
    finally:
        stop_all([s for s in (gateway, survivor, archiver) if s is not None])
