"""The responder's decisions on a real Redis: an utterance is answered once, whatever
its deliveries, and one whose asker gave up is archived without asking the model;
and the spans of that work: the model call, the context's read and write, the
summary."""

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncGenerator, Sequence
from datetime import timedelta
from itertools import count

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from services.responder.context import ContextStore
from services.responder.prompts import UNAVAILABLE_REPLY
from services.responder.providers.base import (
    ChatMessage,
    LLMUnavailableError,
    current_usage,
)
from services.responder.service import Responder
from services.responder.settings import ResponderSettings
from shared import telemetry
from shared.cancel import CancelWatch, request_cancel
from shared.events import SessionEndRequested, UtteranceReceived, utcnow
from shared.streams import CANCELS
from tests.support.tracing import RecordedSpans, words_on


class CountingModel:
    """Answers differently every time, so a second call would show in the text."""

    name = "counting"
    model = "counting"

    def __init__(self) -> None:
        self.calls = 0
        self._numbers = count(1)
        self.fail = False

    async def start(self) -> None:
        return None

    async def stream(
        self, system: str, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> AsyncGenerator[str, None]:
        self.calls += 1
        if self.fail:
            raise LLMUnavailableError("scripted outage")
        yield f"Answer number {next(self._numbers)}."
        yield " What do you think?"

    async def aclose(self) -> None:
        return None


@pytest.fixture
def model() -> CountingModel:
    return CountingModel()


@pytest.fixture
def responder(redis: Redis, model: CountingModel) -> Responder:
    store = ContextStore(redis, max_exchanges=5, ttl_s=1800)
    return Responder(store, model, ResponderSettings(_env_file=None))


def utterance(text: str = "I read about tides today", **fields: object) -> UtteranceReceived:
    return UtteranceReceived.model_validate(
        {"session_id": "s1", "source": "websocket", "text": text, **fields}
    )


async def test_a_redelivered_utterance_gets_the_same_answer_without_the_model(
    responder: Responder, model: CountingModel
) -> None:
    event = utterance()
    first, first_exchange = await responder.answer(event)
    again, again_exchange = await responder.answer(event)
    assert model.calls == 1
    assert first is not None and again is not None
    assert again.agent_text == first.agent_text == "Answer number 1. What do you think?"
    assert again.timestamp == first.timestamp
    assert again_exchange == first_exchange


async def test_an_apology_is_also_answered_once(
    responder: Responder, model: CountingModel, redis: Redis
) -> None:
    model.fail = True
    event = utterance()
    first, _ = await responder.answer(event)
    model.fail = False
    again, exchange = await responder.answer(event)
    assert model.calls == 1
    assert first is not None and again is not None
    assert again.agent_text == first.agent_text
    assert exchange.agent_text == first.agent_text
    # The apology stays out of the model's context all the same.
    store = ContextStore(redis, max_exchanges=5, ttl_s=1800)
    assert await store.load("s1") == []


async def test_an_utterance_past_its_deadline_is_archived_unanswered(
    responder: Responder, model: CountingModel, redis: Redis
) -> None:
    event = utterance(deadline=utcnow() - timedelta(seconds=1))
    reply, exchange = await responder.answer(event)
    assert reply is None
    assert model.calls == 0
    assert exchange.expired and exchange.agent_text == ""
    assert exchange.user_text == event.text
    store = ContextStore(redis, max_exchanges=5, ttl_s=1800)
    assert await store.load("s1") == []


async def test_an_utterance_within_its_deadline_is_answered(
    responder: Responder, model: CountingModel
) -> None:
    reply, exchange = await responder.answer(utterance(deadline=utcnow() + timedelta(seconds=30)))
    assert reply is not None and not exchange.expired
    assert model.calls == 1


class StallingModel(CountingModel):
    """Writes a first piece, then waits for a cancel that stops it."""

    async def stream(
        self, system: str, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> AsyncGenerator[str, None]:
        self.calls += 1
        yield "Tides rise"
        await asyncio.Event().wait()
        yield " never"


async def test_a_model_still_writing_at_the_deadline_is_stopped_there(redis: Redis) -> None:
    store = ContextStore(redis, max_exchanges=5, ttl_s=1800)
    responder = Responder(store, StallingModel(), ResponderSettings(_env_file=None))
    began = asyncio.get_running_loop().time()
    reply, exchange = await asyncio.wait_for(
        responder.answer(utterance(deadline=utcnow() + timedelta(seconds=0.5))), 10
    )
    assert asyncio.get_running_loop().time() - began < 3
    assert reply is not None and not exchange.expired
    # As for a model that fails: nothing was sent yet, so the apology is the reply.
    assert exchange.agent_text == UNAVAILABLE_REPLY


# -- its spans ---------------------------------------------------------------------------


def everything_on(spans: RecordedSpans) -> str:
    return json.dumps([words_on(span) for span in spans.all()], default=str)


async def test_the_model_call_is_a_genai_client_span(
    responder: Responder, spans: RecordedSpans
) -> None:
    await responder.answer(utterance(session_id="s-chat"))
    chat = spans.one("chat counting")
    assert chat.kind is SpanKind.CLIENT
    attributes = dict(chat.attributes or {})
    assert attributes["session.id"] == "s-chat"
    assert attributes["gen_ai.operation.name"] == "chat"
    # A provider of the operator's own goes by its name.
    assert attributes["gen_ai.provider.name"] == "counting"
    assert attributes["gen_ai.request.model"] == "counting"
    assert attributes["gen_ai.request.max_tokens"] == 150
    assert attributes["gen_ai.request.temperature"] == 0.7
    # It reported no usage: no figures are made up for it.
    assert "gen_ai.usage.input_tokens" not in attributes
    assert "gen_ai.response.finish_reasons" not in attributes
    (first,) = [e for e in chat.events if e.name == "gen_ai.first_token"]
    assert first.attributes is not None
    assert first.attributes["lva.first_token_ms"] == attributes["lva.first_token_ms"]
    assert chat.start_time is not None and chat.start_time <= first.timestamp
    assert chat.status.status_code is StatusCode.UNSET
    assert "lva.cancelled" not in attributes


async def test_context_read_and_write_are_redis_client_spans(
    responder: Responder, spans: RecordedSpans
) -> None:
    await responder.answer(utterance(session_id="s-ctx"))
    await responder.answer(utterance("And the moon?", session_id="s-ctx"))
    reads, writes = spans.named("context.read"), spans.named("context.write")
    assert len(reads) == len(writes) == 2
    for span in reads + writes:
        assert span.kind is SpanKind.CLIENT
        assert span.attributes is not None
        assert span.attributes["session.id"] == "s-ctx"
        assert span.attributes["db.system.name"] == "redis"
    assert [r.attributes and r.attributes["lva.context.exchanges"] for r in reads] == [0, 1]
    assert reads[0].attributes and reads[0].attributes["db.operation.name"] == "MGET"
    assert writes[1].attributes and writes[1].attributes["lva.recorded"] is True


async def test_no_learner_words_on_any_span_unless_the_operator_opts_in(
    responder: Responder, spans: RecordedSpans
) -> None:
    said = "I read about the tides of Fundy today"
    await responder.answer(utterance(said, session_id="s-words"))
    assert said not in everything_on(spans)
    assert "Answer number" not in everything_on(spans)

    spans.clear()
    spans.capture_content()
    await responder.answer(utterance(said, session_id="s-words-2"))
    chat = spans.one("chat counting")
    assert chat.attributes is not None
    (asked,) = json.loads(str(chat.attributes["gen_ai.input.messages"]))
    assert asked == {"role": "user", "parts": [{"type": "text", "content": said}]}
    (wrote,) = json.loads(str(chat.attributes["gen_ai.output.messages"]))
    assert wrote["role"] == "assistant"
    assert wrote["parts"][0]["content"].startswith("Answer number")


async def test_a_model_failure_marks_the_chat_span(
    responder: Responder, model: CountingModel, spans: RecordedSpans
) -> None:
    model.fail = True
    await responder.answer(utterance(session_id="s-fail"))
    chat = spans.one("chat counting")
    assert chat.status.status_code is StatusCode.ERROR
    assert chat.attributes and chat.attributes["error.type"] == "LLMUnavailableError"


async def test_a_cancel_while_the_model_writes_is_an_event_not_an_error(
    redis: Redis, spans: RecordedSpans
) -> None:
    cancels = CancelWatch(redis)
    listening = asyncio.create_task(cancels.run())
    model = StallingModel()
    store = ContextStore(redis, max_exchanges=5, ttl_s=1800)
    responder = Responder(store, model, ResponderSettings(_env_file=None), cancels)
    event = utterance(session_id="s-cancel", stream=True, reply_to="r")

    async def sink(text: str) -> bool:
        # The learner cancels once the first words are on screen.
        await request_cancel(redis, event.event_id)
        return True

    try:
        for _ in range(500):  # subscribed first, or the cancel would go by unheard
            if (await redis.pubsub_numsub(CANCELS))[0][1]:
                break
            await asyncio.sleep(0.01)
        reply, _ = await asyncio.wait_for(responder.answer(event, sink), 10)
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
    assert reply is not None and reply.cancelled
    chat = spans.one("chat counting")
    assert [e.name for e in chat.events] == ["gen_ai.first_token", "lva.cancelled"]
    assert chat.attributes and chat.attributes["lva.cancelled"] is True
    assert chat.status.status_code is StatusCode.UNSET


async def test_a_cancel_the_asker_reports_is_an_event_too(
    responder: Responder, spans: RecordedSpans
) -> None:
    async def refusing(text: str) -> bool:
        return False  # the cancel key was set when the piece was to be sent

    await responder.answer(utterance(session_id="s-refused", stream=True, reply_to="r"), refusing)
    chat = spans.one("chat counting")
    assert "lva.cancelled" in [e.name for e in chat.events]


async def test_the_session_summary_is_a_span(responder: Responder, spans: RecordedSpans) -> None:
    await responder.answer(utterance("I read about tides and moons", session_id="s-end"))
    await responder.end(SessionEndRequested(session_id="s-end", source="websocket"))
    summary = spans.one("session.summary")
    assert summary.attributes is not None
    assert summary.attributes["session.id"] == "s-end"
    assert summary.attributes["lva.context.exchanges"] == 1
    assert "lva.summary" not in summary.attributes


async def test_spans_under_a_bound_consume_span_carry_its_session(
    responder: Responder, spans: RecordedSpans
) -> None:
    tracer = trace.get_tracer_provider().get_tracer("test")
    with tracer.start_as_current_span("consume") as consume:
        telemetry.bind_session("s-bound")
        await responder.answer(utterance(session_id="s-bound"))
    children = [
        s
        for s in spans.all()
        if s.parent and s.parent.span_id == consume.get_span_context().span_id
    ]
    assert {s.name for s in children} == {"context.read", "chat counting", "context.write"}
    assert all(s.attributes and s.attributes["session.id"] == "s-bound" for s in spans.all())


async def test_without_tracing_usage_is_still_counted_for_the_metrics(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No provider, as in a process with no collector configured (whatever an
    # earlier test of this run installed).
    monkeypatch.setattr(trace, "get_tracer_provider", trace.NoOpTracerProvider)

    class Reporting(CountingModel):
        name = "reporting-model"

        async def stream(
            self,
            system: str,
            messages: Sequence[ChatMessage],
            *,
            max_tokens: int,
            temperature: float,
        ) -> AsyncGenerator[str, None]:
            usage = current_usage()
            assert usage is not None, "the responder asked for no usage"
            usage.input_tokens, usage.output_tokens = 120, 7
            yield "Hello there."

    def counted(direction: str) -> float:
        labels = {"provider": "reporting-model", "direction": direction}
        return REGISTRY.get_sample_value("lva_model_tokens_sum", labels) or 0.0

    before = counted("input"), counted("output")
    store = ContextStore(redis, max_exchanges=5, ttl_s=1800)
    responder = Responder(store, Reporting(), ResponderSettings(_env_file=None))
    reply, _ = await responder.answer(utterance(session_id="s-off"))
    assert reply is not None and reply.agent_text.startswith("Hello there.")
    assert (counted("input") - before[0], counted("output") - before[1]) == (120, 7)


async def test_a_redis_failure_marks_the_context_span_with_its_type_only(
    spans: RecordedSpans,
) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead: Redis = Redis(port=port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    try:
        with pytest.raises(RedisError):
            await ContextStore(dead, max_exchanges=5, ttl_s=60).recall("s-down", "e1")
    finally:
        await dead.aclose()
    read = spans.one("context.read")
    assert read.status.status_code is StatusCode.ERROR
    assert read.attributes and str(read.attributes["error.type"]).endswith("Error")
    assert read.events == ()
