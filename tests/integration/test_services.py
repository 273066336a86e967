"""Services as real processes on a real Redis: work sharing, reply routing, recovery."""

import asyncio
from pathlib import Path

from tests.support.services import ServiceProcess, start_service
from tests.support.stack import archived, base_env, converse, eventually
from tests.wire.openai_server import OpenAIWireServer


def stop_all(services: list[ServiceProcess]) -> None:
    for service in services:
        service.stop()


async def test_two_responders_share_work_and_replies_reach_the_right_gateway(
    redis_url: str, echo: OpenAIWireServer, tmp_path: Path
) -> None:
    db = tmp_path / "archive.db"
    env = base_env(redis_url, echo, db)
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
    redis_url: str, echo: OpenAIWireServer, tmp_path: Path
) -> None:
    db = tmp_path / "archive.db"
    env = base_env(redis_url, echo, db)
    archiver = start_service("archiver", env, tmp_path)
    doomed = start_service("responder", env, tmp_path, label="responder-doomed")
    gateway = start_service("gateway", env, tmp_path)
    survivor: ServiceProcess | None = None
    try:
        echo.delay = 3.0  # the doomed responder is mid-call when it dies
        request = asyncio.create_task(converse(gateway, "s-recover", "remember this thought"))
        await eventually(lambda: len(echo.requests) == 1, timeout=10)
        doomed.kill()
        echo.delay = 0.0
        survivor = start_service("responder", env, tmp_path, label="responder-survivor")
        reply = await request
        assert "remember this thought" in reply["agent_text"]
        await eventually(lambda: len(archived(db)) == 1)
        assert archived(db)[0][1] == "remember this thought"
    finally:
        stop_all([s for s in (gateway, survivor, archiver) if s is not None])
