"""The whole text loop as a learner meets it: real processes, real Redis, real
SQLite, and the embedded language model that `make run` uses."""

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
import websockets

from tests.e2e.conftest import ws_url
from tests.support.services import ServiceProcess

pytestmark = pytest.mark.slow


async def until(check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.2)


async def test_rest_conversation_is_answered_archived_and_found(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/api/conversation",
        json={"session_id": "rest-1", "text": "I'm learning about photosynthesis in plants"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    # v1's fields, and only `timings` beside them.
    assert set(body) == {"session_id", "user_text", "agent_text", "intent", "timestamp", "timings"}
    timings = body["timings"]
    assert timings["transcribe"] is None
    assert 0 <= timings["first_token"] <= timings["generate"] <= timings["total"]
    assert 0 <= timings["queued"] <= timings["total"]
    assert body["session_id"] == "rest-1"
    assert body["user_text"] == "I'm learning about photosynthesis in plants"
    assert len(body["agent_text"].split()) >= 2
    assert body["timestamp"].endswith("Z")

    async def history() -> list[dict[str, Any]]:
        found = (await api.get("/api/session/rest-1/history")).json()["history"]
        return list(found)

    items = await until(history)
    assert items[0]["user_text"] == body["user_text"]
    assert items[0]["agent_text"] == body["agent_text"]
    assert json.loads(items[0]["metadata"])["source"] == "api"

    search = (await api.post("/api/search", json={"query": "photosynthesis"})).json()
    assert search["count"] >= 1
    assert "<mark>photosynthesis</mark>" in search["results"][0]["user_snippet"]

    stats = (await api.get("/api/stats")).json()
    assert stats["database"]["total_captures"] >= 1
    assert "rest-1" in stats["sessions"]["ids"]
    assert stats["sessions"]["active"] >= 1


async def test_websocket_protocol_and_bad_input_keep_the_connection(
    stack: dict[str, ServiceProcess],
) -> None:
    async with websockets.connect(ws_url(stack, "ws-1")) as ws:

        async def ask(message: str | dict[str, Any]) -> dict[str, Any]:
            await ws.send(message if isinstance(message, str) else json.dumps(message))
            return dict(json.loads(await asyncio.wait_for(ws.recv(), 90)))

        assert await ask({"type": "ping"}) == {"type": "pong"}
        assert (await ask("{not json"))["code"] == "invalid_json"
        assert (await ask({"type": "dance"}))["code"] == "unknown_type"
        assert (await ask("[1, 2]"))["code"] == "unknown_type"
        assert (await ask({"type": "text", "text": "   "}))["code"] == "empty_text"
        assert (await ask({"type": "text"}))["code"] == "empty_text"
        assert (await ask({"type": "text", "text": "x" * 4001}))["code"] == "text_too_long"

        reply = await ask({"type": "text", "text": "Hello, I'm learning about volcanoes"})
        assert reply["type"] == "response"
        assert reply["user_text"] == "Hello, I'm learning about volcanoes"
        assert reply["agent_text"]
        assert reply["intent"] == "statement"

        summary = await ask({"type": "end"})
        assert summary["type"] == "summary"
        assert "volcanoes" in summary["text"]


async def test_websocket_with_a_bad_session_id_is_told_why_and_closed(
    stack: dict[str, ServiceProcess],
) -> None:
    async with websockets.connect(ws_url(stack, "bad.id")) as ws:
        message = json.loads(await ws.recv())
        assert message["type"] == "error"
        assert message["code"] == "invalid_session_id"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("post", "/api/conversation", {"session_id": "s"}, 400),
        ("post", "/api/conversation", {"session_id": "s", "text": ""}, 400),
        ("post", "/api/conversation", {"session_id": "s", "text": "x" * 4001}, 400),
        ("post", "/api/conversation", {"session_id": "no spaces", "text": "hi"}, 400),
        ("post", "/api/search", {"query": "x", "limit": 0}, 400),
        ("post", "/api/search", {"query": "x", "limit": 101}, 400),
        ("post", "/api/search", {"query": ""}, 400),
        ("post", "/api/search", {"query": "x" * 2001}, 400),
        ("get", "/api/session/bad.id/history", None, 400),
        ("get", "/api/session/ok/history?limit=0", None, 400),
        ("get", "/api/session/ok/history?limit=many", None, 400),
    ],
)
async def test_bad_rest_input_gets_a_reason(
    api: httpx.AsyncClient, method: str, path: str, body: Any, status: int
) -> None:
    response = await api.request(method, path, json=body)
    assert response.status_code == status
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]


async def test_malformed_json_body_gets_a_reason(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/api/search", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["detail"]


@pytest.mark.parametrize(
    "query", ["c++", '"hi', "AND", "foo-bar", "3:00", "*", "🙂 emoji", "NEAR(", "w" * 2000]
)
async def test_any_typed_search_is_answered(api: httpx.AsyncClient, query: str) -> None:
    response = await api.post("/api/search", json={"query": query, "limit": 5})
    assert response.status_code == 200, response.text
    assert response.json()["query"] == query


async def test_health(api: httpx.AsyncClient) -> None:
    response = await api.get("/health")
    assert response.status_code == 200
    assert response.json()["redis"] == "ok"
