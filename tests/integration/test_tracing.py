"""One utterance is one trace across the services, on real processes.

An OTLP/HTTP receiver in the test run collects what the services export (as
Jaeger or any collector would): a streamed audio utterance over the WebSocket is
one trace with spans from the gateway, the transcriber, the responder and the
archiver, every parent present, every span with the session's id, and none with
the learner's words; a relay-mode phone turn is one trace from telephony through
the responder to the archiver.
"""

import asyncio
import json
import time
from collections.abc import Iterator

import pytest
import websockets

from scripts.relay_call import RelayClient
from tests.support.otlp import OTLPReceiver, ReceivedSpan
from tests.support.redis_server import local_redis
from tests.support.services import ServiceProcess, running
from tests.support.stack import base_env, clip_b64, ws_url
from tests.wire.openai_server import DEFAULT_TRANSCRIPT, OpenAIWireServer


@pytest.fixture(scope="module")
def collector() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def services(
    collector: OTLPReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServiceProcess]]:
    tmp = tmp_path_factory.mktemp("tracing")
    with OpenAIWireServer() as llm, local_redis() as server:
        llm.echo = True
        env = {
            **base_env(server.url, llm, tmp / "archive.db"),
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
            # Spans leave each process within 0.2 s, not 5 s.
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "TWILIO_MODE": "relay",
        }
        names = ["archiver", "responder", "transcriber", "gateway", "telephony"]
        with running(names, env, tmp) as started:
            yield started


async def whole_trace(
    collector: OTLPReceiver, session: str, services: set[str], timeout: float = 30
) -> list[ReceivedSpan]:
    """The trace of the session's turn, once it has spans from every one of
    `services` (and a moment more, for stragglers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        turns = [
            s
            for s in collector.snapshot()
            if s.name == "turn" and s.attributes.get("session.id") == session
        ]
        if turns:
            spans = collector.trace(turns[0].trace_id)
            if {s.service for s in spans} >= services:
                await asyncio.sleep(0.5)
                return collector.trace(turns[0].trace_id)
        await asyncio.sleep(0.2)
    seen = {(s.service, s.name) for s in collector.snapshot()}
    raise AssertionError(f"no whole trace for {session}; spans seen: {sorted(seen)}")


def check_tree(spans: list[ReceivedSpan], session: str) -> ReceivedSpan:
    """Every parent is in the trace, there is one root (returned), and every span
    carries the session's id."""
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if not s.parent_span_id]
    assert len(roots) == 1, [(r.service, r.name) for r in roots]
    orphans = [
        (s.service, s.name) for s in spans if s.parent_span_id and s.parent_span_id not in ids
    ]
    assert not orphans, orphans
    without = [(s.service, s.name) for s in spans if s.attributes.get("session.id") != session]
    assert not without, without
    return roots[0]


def no_words(spans: list[ReceivedSpan], words: str) -> None:
    for span in spans:
        for key, value in span.attributes.items():
            assert words not in str(value), f"{span.service} {span.name} {key} has the words"
        for _, attributes in span.events:
            assert words not in json.dumps(attributes), f"{span.service} {span.name} event"


async def test_a_streamed_audio_utterance_is_one_trace_across_four_services(
    services: dict[str, ServiceProcess], collector: OTLPReceiver
) -> None:
    session = "traced-audio"
    url = ws_url(services["gateway"], session) + "?stream=1"
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "audio", "audio": clip_b64("sentence1.ogg"), "id": "a1"}))
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 60))
            assert message["type"] != "error", message
            if message["type"] == "response":
                break
    spans = await whole_trace(
        collector, session, {"gateway", "transcriber", "responder", "archiver"}
    )
    root = check_tree(spans, session)
    assert (root.service, root.name) == ("gateway", "turn")
    assert root.attributes["lva.source"] == "websocket"
    assert root.attributes["lva.cancelled"] is False
    # Its own trace, linked to the connection's (which lives as long as the socket),
    # where FastAPI's instrumentation has a span for each WebSocket message.
    (connection,) = root.links
    messages = [s.name for s in collector.trace(connection) if "websocket" in s.name]
    assert any("receive" in name for name in messages), messages
    assert any("send" in name for name in messages), messages
    names = {(s.service, s.name) for s in spans}
    assert ("archiver", "archive.write") in names
    assert {("transcriber", "stt"), ("responder", "context.read")} <= names
    (chat,) = [s for s in spans if s.service == "responder" and s.name.startswith("chat ")]
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.provider.name"] == "openai"
    assert chat.attributes["gen_ai.request.max_tokens"] > 0
    assert chat.attributes["gen_ai.usage.input_tokens"] > 0
    assert chat.attributes["gen_ai.usage.output_tokens"] > 0
    assert chat.attributes["gen_ai.response.finish_reasons"]
    assert "gen_ai.first_token" in {name for name, _ in chat.events}
    stt = next(s for s in spans if s.name == "stt")
    assert stt.attributes["lva.audio.duration_s"] > 0
    write = next(s for s in spans if s.name == "archive.write")
    assert write.attributes["db.operation.batch.size"] >= 1
    no_words(spans, DEFAULT_TRANSCRIPT)


async def test_a_relay_phone_turn_is_one_trace_from_telephony_to_the_archive(
    services: dict[str, ServiceProcess], collector: OTLPReceiver
) -> None:
    text = "I am reading about the tides of the Bay of Fundy"
    base = services["telephony"].base_url.replace("http://", "ws://")
    async with RelayClient(base, "CAtraced") as call:
        spoken, _ = await call.say(text)
        assert spoken.text.startswith("You said:")
    session = "twilio_CAtraced"
    spans = await whole_trace(collector, session, {"telephony", "responder", "archiver"})
    root = check_tree(spans, session)
    assert (root.service, root.name) == ("telephony", "turn")
    assert root.attributes["lva.source"] == "twilio"
    no_words(spans, text)


def test_every_log_line_is_json_and_names_its_trace(
    services: dict[str, ServiceProcess], collector: OTLPReceiver
) -> None:
    """Run after the turns above: the lines logged while their spans were current
    carry the ids of traces the collector has."""
    traces = {s.trace_id for s in collector.snapshot()}
    traced = 0
    for name, service in services.items():
        for line in service.logs().splitlines():
            record = json.loads(line)
            assert {"time", "level", "logger", "message", "service"} <= set(record), line
            assert record["service"] == name
            if "trace_id" in record:
                traced += 1
                assert record["trace_id"] in traces, line
    assert traced > 0
