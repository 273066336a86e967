"""Streamed replies with the embedded models (`make run`'s): a clip over `?stream=1`
gives what was heard, then the reply in pieces, then the whole reply; a cancel
stops the embedded model mid-reply."""

import asyncio
import base64
import json
import sqlite3
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs in the venv
import pytest
import redis
import websockets

from shared.streams import Keys
from tests.e2e.conftest import ws_url
from tests.support.services import ServiceProcess
from tests.support.stack import eventually
from tests.support.wer import word_error_rate

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "audio"
SPOKEN = next(
    f["text"]
    for f in json.loads((FIXTURES / "manifest.json").read_text())["files"]
    if f["name"] == "sentence3.webm"
)
# A question SmolLM2 answers at length (30 to 80 words, stopped after three sentences).
ROME = "Tell me everything you know about the history of Rome"


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


def cpu_seconds(service: ServiceProcess) -> float:
    """CPU time the service's process has used so far (every thread)."""
    spent = psutil.Process(service.proc.pid).cpu_times()
    return float(spent.user + spent.system)


def archived_replies(archiver: ServiceProcess, session: str) -> list[tuple[str, dict[str, Any]]]:
    """(agent_text, metadata) of every capture of `session` in the archive."""
    db = Path(archiver.env["DATABASE_URL"].removeprefix("sqlite:///"))
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT agent_text, metadata FROM captures WHERE session_id = ?", (session,)
        ).fetchall()
    return [(a, json.loads(m)) for a, m in rows]


async def test_a_cancel_stops_the_embedded_model_mid_reply(
    stack: dict[str, ServiceProcess],
) -> None:
    responder = stack["responder"]
    # The same question answered in full: what the model costs when nobody stops it.
    # CPU time rather than wall time: a busy machine stretches the one, hardly the other.
    async with websockets.connect(ws_url(stack, "stream-whole") + "?stream=1") as ws:
        before = cpu_seconds(responder)
        await ws.send(json.dumps({"type": "text", "text": ROME}))
        whole = (await until_response(ws))[-1]
        whole_cpu = cpu_seconds(responder) - before
    assert whole["type"] == "response" and whole["cancelled"] is False, whole

    async with websockets.connect(ws_url(stack, "stream-cancel") + "?stream=1") as ws:
        before = cpu_seconds(responder)
        await ws.send(json.dumps({"type": "text", "text": ROME, "id": "rome"}))
        first = json.loads(await asyncio.wait_for(ws.recv(), 120))
        assert first["type"] == "delta", first
        await ws.send(json.dumps({"type": "cancel", "id": "rome"}))
        rest = await until_response(ws)
        cut_cpu = cpu_seconds(responder) - before
        # A model thread that went on writing after the reply would keep a core busy.
        await asyncio.sleep(1.0)
        after_cpu = cpu_seconds(responder) - before - cut_cpu
    final = rest[-1]
    assert final["type"] == "response" and final["cancelled"] is True, final
    sent = first["text"] + "".join(m["text"] for m in rest[:-1])
    assert final["agent_text"] == sent
    assert len(sent.split()) < len(whole["agent_text"].split()), (sent, whole["agent_text"])
    # The thread stopped within a few tokens of the first word: a small part of the
    # whole reply's work (about a twentieth on this machine; a thread that ignored
    # the cancel would write until its own end, as much as the whole reply).
    assert cut_cpu * 3 < whole_cpu, (cut_cpu, whole_cpu)
    assert after_cpu < 0.25, f"the responder used {after_cpu:.2f} s of CPU after the reply"

    # The archive and the context hold what the learner received, marked cancelled.
    await eventually(lambda: bool(archived_replies(stack["archiver"], "stream-cancel")))
    [(agent_text, metadata)] = archived_replies(stack["archiver"], "stream-cancel")
    assert agent_text == sent and metadata["cancelled"] is True
    with redis.Redis.from_url(responder.env["REDIS_URL"]) as client:
        context = json.loads(client.get(Keys.context("stream-cancel")) or "[]")
    assert [(x["user"], x["agent"]) for x in context] == [(ROME, sent)]
