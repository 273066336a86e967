"""Streamed replies with the embedded models (`make run`'s): a clip over `?stream=1`
gives what was heard, then the reply in pieces, then the whole reply; a cancel
stops the embedded model mid-reply."""

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.e2e.conftest import ws_url
from tests.support.services import ServiceProcess
from tests.support.wer import word_error_rate

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "audio"
SPOKEN = next(
    f["text"]
    for f in json.loads((FIXTURES / "manifest.json").read_text())["files"]
    if f["name"] == "sentence3.webm"
)


async def until_response(ws: Any) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while not messages or messages[-1]["type"] not in ("response", "error"):
        messages.append(json.loads(await asyncio.wait_for(ws.recv(), 120)))
    return messages


async def test_a_clip_streams_transcript_pieces_then_the_reply(
    stack: dict[str, ServiceProcess],
) -> None:
    clip = base64.b64encode((FIXTURES / "sentence3.webm").read_bytes()).decode()
    url = ws_url(stack, "stream-voice") + "?stream=1"
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "audio", "audio": clip, "id": "v1"}))
        messages = await until_response(ws)
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "transcript", kinds
    assert kinds[-1] == "response", messages[-1]
    assert kinds.count("delta") >= 1 and set(kinds[1:-1]) == {"delta"}
    assert all(m["id"] == "v1" for m in messages)
    assert word_error_rate(SPOKEN, messages[0]["text"]) <= 0.5
    final = messages[-1]
    assert final["user_text"] == messages[0]["text"]
    assert "".join(m["text"] for m in messages[1:-1]) == final["agent_text"]
    timings = final["timings"]
    assert timings["transcribe"] > 0
    assert timings["first_token"] <= timings["generate"] <= timings["total"]


async def test_a_cancel_stops_the_embedded_model_mid_reply(
    stack: dict[str, ServiceProcess],
) -> None:
    url = ws_url(stack, "stream-cancel") + "?stream=1"
    async with websockets.connect(url) as ws:
        await ws.send(
            json.dumps(
                {"type": "text", "text": "Tell me everything you know about the history of Rome"}
            )
        )
        first = json.loads(await asyncio.wait_for(ws.recv(), 120))
        assert first["type"] == "delta", first
        await ws.send(json.dumps({"type": "cancel"}))
        rest = await until_response(ws)
    final = rest[-1]
    assert final["type"] == "response" and final["cancelled"] is True
    sent = first["text"] + "".join(m["text"] for m in rest[:-1])
    assert final["agent_text"] == sent
