"""Streamed replies on real processes: the first piece arrives while the model is
still writing, a cancel stops it, and a v1 client sees nothing new.

The model is the OpenAI wire server writing one piece (two words) every 100 ms.
"""

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import websockets

from shared.streams import Keys
from tests.support.redis_server import local_redis
from tests.support.services import ServiceProcess, running
from tests.support.stack import base_env, clip_b64, eventually, ws_url
from tests.wire import stream_pieces
from tests.wire.openai_server import DEFAULT_TRANSCRIPT, OpenAIWireServer

# One long sentence: the shaping keeps all of it, and it takes 2 s to write.
LONG = (
    "Tides rise and fall twice a day because the moon and the sun pull on the oceans "
    "together, and the pattern shifts a little every day as the moon moves along its "
    "orbit around the earth."
)
# Long enough a message to get no follow-up question appended.
DETAILED = "I spent the afternoon at the beach watching the tide come in slowly"
PIECE_DELAY_S = 0.1


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
    redis_url: str

    def context(self, session_id: str) -> list[tuple[str, str]]:
        """(user, agent) of every exchange in the session's context, as the model
        will see it next turn."""
        with redis.Redis.from_url(self.redis_url) as client:
            stored = json.loads(client.get(Keys.context(session_id)) or "[]")
        return [(x["user"], x["agent"]) for x in stored]

    def captures(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(user_text, agent_text, metadata) of every archived exchange."""
        if not self.db.exists():
            return []
        with sqlite3.connect(self.db) as conn:
            rows = conn.execute("SELECT user_text, agent_text, metadata FROM captures")
            return [(u, a, json.loads(m)) for u, a, m in rows]


@pytest.fixture(scope="module")
def stack(llm: OpenAIWireServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("streaming")
    with local_redis() as server:
        env = {**base_env(server.url, llm, tmp / "archive.db"), "REPLY_TIMEOUT": "30"}
        with running(["archiver", "responder", "transcriber", "gateway"], env, tmp) as services:
            yield Stack(services["gateway"], tmp / "archive.db", server.url)


@pytest.fixture
async def streaming(stack: Stack) -> AsyncIterator[Any]:
    url = ws_url(stack.gateway, "stream-s") + "?stream=1"
    async with websockets.connect(url, max_size=None) as ws:
        yield ws


async def receive(ws: Any) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 30))
    return message


async def until_response(ws: Any) -> list[dict[str, Any]]:
    messages = []
    while True:
        message = await receive(ws)
        messages.append(message)
        if message["type"] in ("response", "error"):
            return messages


async def test_the_first_piece_arrives_long_before_the_reply_ends(
    streaming: Any, slow_llm: OpenAIWireServer
) -> None:
    await streaming.send(json.dumps({"type": "text", "text": DETAILED, "id": "m-1"}))
    first = await receive(streaming)
    # The model is still writing: most of its pieces are not even sent yet.
    written = slow_llm.stream_pieces_sent[-1]
    assert first == {"type": "delta", "text": first["text"], "id": "m-1"}
    assert written < len(stream_pieces(LONG)) // 2, written
    rest = await until_response(streaming)
    deltas, final = [first, *rest[:-1]], rest[-1]
    assert [m["type"] for m in deltas] == ["delta"] * len(deltas)
    assert len(deltas) >= 3
    assert final["type"] == "response" and final["id"] == "m-1"
    assert all(m["id"] == "m-1" for m in deltas)
    assert "".join(m["text"] for m in deltas) == final["agent_text"] == LONG
    assert final["cancelled"] is False
    timings = final["timings"]
    assert 0 <= timings["first_token"] <= timings["generate"] <= timings["total"]
    assert timings["queued"] >= 0 and timings["transcribe"] is None


async def test_a_v1_client_on_the_same_gateway_sees_only_v1_messages(
    stack: Stack, slow_llm: OpenAIWireServer
) -> None:
    async with websockets.connect(ws_url(stack.gateway, "stream-v1")) as ws:
        await ws.send(json.dumps({"type": "text", "text": DETAILED}))
        messages = await until_response(ws)
        await ws.send(json.dumps({"type": "ping"}))
        pong = await receive(ws)
    assert [m["type"] for m in messages] == ["response"]
    (reply,) = messages
    assert "id" not in reply
    assert set(reply) == {
        "type", "user_text", "agent_text", "intent", "cancelled", "timings"
    }  # fmt: skip
    assert reply["agent_text"] == LONG
    assert pong == {"type": "pong"}


async def test_a_clip_gets_its_transcript_first_then_pieces_then_the_reply(
    streaming: Any, slow_llm: OpenAIWireServer
) -> None:
    slow_llm.piece_delay = 0.0
    await streaming.send(
        json.dumps({"type": "audio", "audio": clip_b64("sentence1.ogg"), "id": "clip-1"})
    )
    messages = await until_response(streaming)
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "transcript" and kinds[-1] == "response"
    assert set(kinds[1:-1]) == {"delta"}
    assert messages[0] == {"type": "transcript", "text": DEFAULT_TRANSCRIPT, "id": "clip-1"}
    final = messages[-1]
    assert final["user_text"] == DEFAULT_TRANSCRIPT
    assert "".join(m["text"] for m in messages[1:-1]) == final["agent_text"]
    assert final["timings"]["transcribe"] > 0


async def test_a_cancel_stops_the_model_and_keeps_only_what_was_sent(
    stack: Stack, slow_llm: OpenAIWireServer
) -> None:
    cut_before = slow_llm.streams_cut_short
    # A session of its own: its context holds this exchange alone.
    async with websockets.connect(ws_url(stack.gateway, "stream-cut") + "?stream=1") as ws:
        await ws.send(json.dumps({"type": "text", "text": DETAILED, "id": "stop-me"}))
        received = [await receive(ws)]
        await ws.send(json.dumps({"type": "cancel", "id": "stop-me"}))
        received += await until_response(ws)
    final = received[-1]
    assert final["type"] == "response" and final["cancelled"] is True
    sent = "".join(m["text"] for m in received[:-1])
    assert final["agent_text"] == sent
    assert sent and LONG.startswith(sent) and sent != LONG
    # The wire server saw its stream closed before its last piece.
    await eventually(lambda: slow_llm.streams_cut_short == cut_before + 1, timeout=10)
    assert slow_llm.stream_pieces_sent[-1] < len(stream_pieces(LONG))
    # The archive holds what the learner received, marked as cut short.
    kept = (DETAILED, sent, {"cancelled": True})

    def archived_as_sent() -> bool:
        return any(
            (u, a, {"cancelled": m.get("cancelled")}) == kept for u, a, m in stack.captures()
        )

    await eventually(archived_as_sent)
    # So does the context the model reads next turn (written before the response).
    assert stack.context("stream-cut") == [(DETAILED, sent)]


async def test_a_message_cancelled_while_it_waits_keeps_the_words_unanswered(
    stack: Stack, streaming: Any, slow_llm: OpenAIWireServer
) -> None:
    waiting = "This message waits behind the first one and is cancelled there"
    await streaming.send(json.dumps({"type": "text", "text": DETAILED, "id": "first"}))
    await streaming.send(json.dumps({"type": "text", "text": waiting, "id": "second"}))
    await streaming.send(json.dumps({"type": "cancel", "id": "second"}))
    first = await until_response(streaming)
    second = await until_response(streaming)
    assert first[-1]["id"] == "first" and first[-1]["cancelled"] is False
    assert [m["type"] for m in second] == ["response"]
    assert second[0]["id"] == "second"
    assert second[0]["cancelled"] is True and second[0]["agent_text"] == ""
    await eventually(lambda: any((u, a) == (waiting, "") for u, a, _ in stack.captures()))


async def test_server_sent_events_carry_the_same_messages(
    stack: Stack, slow_llm: OpenAIWireServer
) -> None:
    slow_llm.piece_delay = 0.02
    events: list[tuple[str, dict[str, Any]]] = []
    async with (
        httpx.AsyncClient(base_url=stack.gateway.base_url, timeout=30) as client,
        client.stream(
            "POST", "/api/conversation/stream", json={"session_id": "sse-1", "text": DETAILED}
        ) as stream,
    ):
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        name = ""
        async for line in stream.aiter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    names = [n for n, _ in events]
    assert names[-1] == "response" and set(names[:-1]) == {"delta"}
    assert all(body["type"] == n for n, body in events)
    final = events[-1][1]
    assert "".join(body["text"] for _, body in events[:-1]) == final["agent_text"] == LONG
    assert final["session_id"] == "sse-1"


async def test_a_bad_request_to_the_event_stream_is_plain_json(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway.base_url, timeout=30) as client:
        response = await client.post("/api/conversation/stream", json={"text": "  "})
    assert response.status_code == 400
    assert response.json()["code"] == "empty_text"


async def test_an_id_that_is_not_a_short_string_is_refused(streaming: Any) -> None:
    await streaming.send(json.dumps({"type": "text", "text": "hi", "id": "x" * 65}))
    assert (await receive(streaming))["code"] == "invalid_id"
    await streaming.send(json.dumps({"type": "ping", "id": 7}))
    assert (await receive(streaming))["code"] == "invalid_id"
    await streaming.send(json.dumps({"type": "ping", "id": "p"}))
    assert await receive(streaming) == {"type": "pong", "id": "p"}
