"""WebSocket messages with an `id` answered once per session on real processes: a
resend (the same connection, or a new one after a drop mid-reply) gets the kept
response with `"replayed": true` and publishes nothing; an error lets a resend try
again; a gateway stopping mid-reply still stops at once.

The model is the OpenAI wire server writing one piece (two words) every 100 ms.
"""

import asyncio
import json
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websockets
from redis.asyncio import Redis

from services.gateway.replay import CLAIM_TTL_S, RENEW_EVERY_S
from services.gateway.ws import REPLAY_POLL_S
from shared.streams import Keys
from tests.support.redis_server import local_redis
from tests.support.services import ServiceProcess, running, start_service
from tests.support.stack import base_env, clip_b64, eventually, ws_url
from tests.wire.openai_server import DEFAULT_TRANSCRIPT, OpenAIWireServer

# One long sentence: the shaping keeps all of it, and it takes 2 s to write.
LONG = (
    "Tides rise and fall twice a day because the moon and the sun pull on the oceans "
    "together, and the pattern shifts a little every day as the moon moves along its "
    "orbit around the earth."
)
PIECE_DELAY_S = 0.1
# Long enough a wait that a second answer, had one been made, would have come.
QUIET_S = 1.5


@pytest.fixture
def slow_llm(llm: OpenAIWireServer) -> OpenAIWireServer:
    llm.reset()
    llm.reply_text = LONG
    llm.piece_delay = PIECE_DELAY_S
    return llm


@dataclass
class Stack:
    gateway: ServiceProcess
    db: Path
    env: dict[str, str]
    tmp: Path

    def captures(self, user_text: str) -> list[tuple[str, dict[str, Any]]]:
        """(agent_text, metadata) of every archived exchange of `user_text`."""
        if not self.db.exists():
            return []
        with sqlite3.connect(self.db) as conn:
            rows = conn.execute(
                "SELECT agent_text, metadata FROM captures WHERE user_text = ?", (user_text,)
            )
            return [(a, json.loads(m)) for a, m in rows]


@pytest.fixture(scope="module")
def stack(llm: OpenAIWireServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("replay")
    with local_redis() as redis:
        env = {**base_env(redis.url, llm, tmp / "archive.db"), "REPLY_TIMEOUT": "30"}
        with running(["archiver", "responder", "transcriber", "gateway"], env, tmp) as services:
            yield Stack(services["gateway"], tmp / "archive.db", env, tmp)


@pytest.fixture
async def keys(stack: Stack) -> AsyncIterator[Redis]:
    """A client of the stack's Redis, to look at the kept answers."""
    client: Redis = Redis.from_url(stack.env["REDIS_URL"])
    yield client
    await client.aclose()


def chat_requests(llm: OpenAIWireServer, text: str) -> int:
    """How many chat requests the model got whose last message is `text`."""
    return sum(
        1
        for r in list(llm.requests)
        if r.path.endswith("/chat/completions") and r.body["messages"][-1]["content"] == text
    )


def connect(gateway: ServiceProcess, session: str) -> Any:
    return websockets.connect(ws_url(gateway, session) + "?stream=1", max_size=None)


async def receive(ws: Any, timeout: float = 30) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return message


async def until_response(ws: Any) -> list[dict[str, Any]]:
    messages = []
    while True:
        message = await receive(ws)
        messages.append(message)
        if message["type"] in ("response", "error"):
            return messages


async def nothing_more(ws: Any) -> None:
    """Nothing else comes: a ping sent now is answered first, after a quiet while."""
    await asyncio.sleep(QUIET_S)
    await ws.send(json.dumps({"type": "ping", "id": "last"}))
    assert await receive(ws) == {"type": "pong", "id": "last"}


async def test_the_same_id_twice_on_one_connection_is_answered_once(
    stack: Stack, slow_llm: OpenAIWireServer
) -> None:
    text = "I walked along the harbour wall this morning and counted the boats"
    async with connect(stack.gateway, "replay-twice") as ws:
        for _ in range(2):
            await ws.send(json.dumps({"type": "text", "text": text, "id": "m-1"}))
        first = await until_response(ws)
        second = await until_response(ws)
        await nothing_more(ws)
    original = first[-1]
    assert original["type"] == "response" and "replayed" not in original
    assert {m["type"] for m in first[:-1]} == {"delta"}
    # The resend gets the very same response, marked, and no pieces.
    assert second == [{**original, "replayed": True}]
    assert original["agent_text"] == LONG and original["id"] == "m-1"
    assert chat_requests(slow_llm, text) == 1
    await eventually(lambda: len(stack.captures(text)) == 1)
    await asyncio.sleep(QUIET_S)
    assert len(stack.captures(text)) == 1


@pytest.mark.parametrize("resend", ["while-answering", "after-answered"])
async def test_a_resend_after_a_drop_mid_reply_gets_the_one_answer(
    stack: Stack, slow_llm: OpenAIWireServer, resend: str
) -> None:
    text = f"The lighthouse keeper told me a long story about storms ({resend})"
    message = json.dumps({"type": "text", "text": text, "id": "outbox-7"})
    session = f"replay-drop-{resend}"
    async with connect(stack.gateway, session) as ws:
        await ws.send(message)
        first = await receive(ws)
        assert first["type"] == "delta" and first["id"] == "outbox-7"
    # Dropped mid-reply: the model is still writing.
    assert len(stack.captures(text)) == 0
    if resend == "after-answered":
        await eventually(lambda: len(stack.captures(text)) == 1)
    async with connect(stack.gateway, session) as ws:
        await ws.send(message)
        answer = await until_response(ws)
        await nothing_more(ws)
    assert [m["type"] for m in answer] == ["response"]
    (reply,) = answer
    assert reply["id"] == "outbox-7" and reply["replayed"] is True
    assert reply["agent_text"] == LONG and reply["user_text"] == text
    assert reply["cancelled"] is False
    assert chat_requests(slow_llm, text) == 1
    await eventually(lambda: len(stack.captures(text)) == 1)
    await asyncio.sleep(QUIET_S)
    assert [agent_text for agent_text, _ in stack.captures(text)] == [LONG]
    assert chat_requests(slow_llm, text) == 1


async def test_two_ids_are_two_answers(stack: Stack, slow_llm: OpenAIWireServer) -> None:
    slow_llm.piece_delay = 0.0
    texts = {"a": "The first of two messages about the tide tables", "b": "And the second one"}
    async with connect(stack.gateway, "replay-two") as ws:
        for answer_id, text in texts.items():
            await ws.send(json.dumps({"type": "text", "text": text, "id": answer_id}))
        replies = [(await until_response(ws))[-1] for _ in texts]
    assert [(r["type"], r["id"], r["user_text"]) for r in replies] == [
        ("response", answer_id, text) for answer_id, text in texts.items()
    ]
    assert all("replayed" not in r for r in replies)
    assert all(chat_requests(slow_llm, text) == 1 for text in texts.values())


async def test_the_same_id_in_another_session_is_another_message(
    stack: Stack, slow_llm: OpenAIWireServer
) -> None:
    slow_llm.piece_delay = 0.0
    text = "Sessions do not share their ids"
    replies = []
    for session in ("replay-s1", "replay-s2"):
        async with connect(stack.gateway, session) as ws:
            await ws.send(json.dumps({"type": "text", "text": text, "id": "same"}))
            replies.append((await until_response(ws))[-1])
    assert all(r["type"] == "response" and "replayed" not in r for r in replies)
    assert chat_requests(slow_llm, text) == 2


async def test_an_error_is_not_an_answer_so_a_resend_is_answered(
    stack: Stack, slow_llm: OpenAIWireServer, keys: Redis
) -> None:
    slow_llm.piece_delay = 0.0
    slow_llm.fail_next(500)  # the transcription of the first send
    message = json.dumps({"type": "audio", "audio": clip_b64("sentence1.ogg"), "id": "clip"})
    async with connect(stack.gateway, "replay-error") as ws:
        await ws.send(message)
        failed = await until_response(ws)
        assert failed == [failed[-1]] and failed[-1]["type"] == "error"
        assert failed[-1]["code"] == "transcription_failed" and failed[-1]["id"] == "clip"
        # The claim was given up, not kept.
        assert await keys.exists(Keys.ws_answer("replay-error", "clip")) == 0
        await ws.send(message)
        answered = await until_response(ws)
    kinds = [m["type"] for m in answered]
    assert kinds[0] == "transcript" and kinds[-1] == "response"
    final = answered[-1]
    assert final["user_text"] == DEFAULT_TRANSCRIPT and "replayed" not in final
    assert await keys.ttl(Keys.ws_answer("replay-error", "clip")) > 3000


async def test_a_cancel_while_a_resend_waits_stops_the_first_attempt(
    stack: Stack, slow_llm: OpenAIWireServer
) -> None:
    text = "A story about the old pier that I will interrupt halfway through"
    message = json.dumps({"type": "text", "text": text, "id": "stop-it"})
    async with connect(stack.gateway, "replay-cancel") as ws:
        await ws.send(message)
        assert (await receive(ws))["type"] == "delta"
    async with connect(stack.gateway, "replay-cancel") as ws:
        await ws.send(message)
        # The resend is waiting for the first attempt once it learnt whose it is.
        await asyncio.sleep(REPLAY_POLL_S * 3)
        await ws.send(json.dumps({"type": "cancel", "id": "stop-it"}))
        (reply,) = await until_response(ws)
    assert reply["replayed"] is True and reply["cancelled"] is True
    assert reply["agent_text"] and LONG.startswith(reply["agent_text"])
    assert reply["agent_text"] != LONG
    assert chat_requests(slow_llm, text) == 1


async def test_a_gateway_stopping_mid_reply_stops_at_once_and_gives_up_the_claim(
    stack: Stack, slow_llm: OpenAIWireServer, keys: Redis
) -> None:
    slow_llm.piece_delay = 0.5  # 10 s to write: far longer than a prompt stop
    gateway = start_service("gateway", stack.env, stack.tmp, label="gateway-stopping")
    try:
        async with connect(gateway, "replay-stop") as ws:
            text = "Tell me everything about lighthouses"
            await ws.send(json.dumps({"type": "text", "text": text, "id": "m"}))
            assert (await receive(ws))["type"] == "delta"
            assert await keys.exists(Keys.ws_answer("replay-stop", "m")) == 1
            began = time.monotonic()
            gateway.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(gateway.proc.wait, 15)
        assert time.monotonic() - began < 5, gateway.logs()
        # uvicorn ends by raising the signal again, once it shut down cleanly.
        assert code in (0, -signal.SIGTERM), gateway.logs()
        assert "Traceback" not in gateway.logs()
        # Nothing was answered: a resend elsewhere is answered afresh.
        assert await keys.exists(Keys.ws_answer("replay-stop", "m")) == 0
    finally:
        gateway.stop()


async def test_a_resend_after_its_gateway_was_killed_mid_reply_is_answered(
    stack: Stack, slow_llm: OpenAIWireServer, keys: Redis
) -> None:
    gateway = start_service("gateway", stack.env, stack.tmp, label="gateway-killed")
    text = "What happens to a message when its gateway dies"
    message = json.dumps({"type": "text", "text": text, "id": "orphan"})
    try:
        async with connect(gateway, "replay-killed") as ws:
            await ws.send(message)
            assert (await receive(ws))["type"] == "delta"
            gateway.kill()
    finally:
        gateway.stop()
    # Its claim outlives it only briefly: no renewal comes from a dead gateway.
    assert 0 < await keys.ttl(Keys.ws_answer("replay-killed", "orphan")) <= CLAIM_TTL_S
    began = time.monotonic()
    async with connect(stack.gateway, "replay-killed") as ws:
        await ws.send(message)
        answer = await until_response(ws)
    assert answer[-1]["type"] == "response", answer
    assert answer[-1]["agent_text"] == LONG and "replayed" not in answer[-1]
    # Taken over once the claim lapsed, well within the reply's deadline.
    assert time.monotonic() - began < CLAIM_TTL_S + 10
    # Under the first attempt's event id: the responder, which went on answering
    # that attempt for the dead gateway, and the takeover make one exchange.
    await eventually(lambda: len(stack.captures(text)) >= 1)
    await asyncio.sleep(1.0)
    assert len(stack.captures(text)) == 1, stack.captures(text)


async def test_a_claim_is_renewed_while_a_long_reply_is_written(
    stack: Stack, slow_llm: OpenAIWireServer, keys: Redis
) -> None:
    slow_llm.piece_delay = (CLAIM_TTL_S + RENEW_EVERY_S) / 20  # outlives one claim
    text = "Tell me at length why the sea is salty"
    async with connect(stack.gateway, "replay-long") as ws:
        await ws.send(json.dumps({"type": "text", "text": text, "id": "long"}))
        answer = await until_response(ws)
    assert answer[-1]["type"] == "response" and answer[-1]["agent_text"] == LONG
    # Kept for the whole replay time once answered, and asked for only once.
    assert await keys.ttl(Keys.ws_answer("replay-long", "long")) > CLAIM_TTL_S
    assert chat_requests(slow_llm, text) == 1
