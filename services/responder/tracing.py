"""The responder's spans, under the consume span of the message they serve: the
model call, named and attributed as OpenTelemetry's GenAI conventions say
(`chat {model}`), the context's read and write (Redis client spans), and the
summary at a session's end.

Each span is given the session's id itself, so it has it even where its parent
was not given one. The learner's words and the companion's reply go on a span
only when the operator opted in (OTEL_CAPTURE_CONTENT), as the GenAI conventions'
`gen_ai.input.messages` and `gen_ai.output.messages` (JSON). With tracing off
every span is the API's non-recording one and nothing more is done for it (no
message is serialised); the provider still reports its usage, for the tokens
metric.
"""

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence

from opentelemetry import trace
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue

from services.responder.providers.base import ChatMessage, LLMProvider, Usage, reporting_usage
from shared import metrics, telemetry

# `gen_ai.provider.name` of the built-in providers (the conventions' names where
# they have one); a provider of the operator's own goes by its `name`.
GENAI_PROVIDERS: Mapping[str, str] = {
    "anthropic": "anthropic",
    "openai": "openai",
    "local": "llama.cpp",
}
# Providers that send no temperature (the Anthropic API version in use takes none):
# their span does not claim one was asked for.
_NO_TEMPERATURE = frozenset({"anthropic"})


def _tracer() -> trace.Tracer:
    # Looked up per span, not at import: a provider installed later (or a test's)
    # is the one used.
    return telemetry.tracer(__name__)


@contextlib.contextmanager
def span(
    name: str,
    session_id: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Iterator[trace.Span]:
    """A span of the responder's work, current in the block; an error marks it
    with its type only (a message may quote what it failed on: the learner's words)."""
    if not telemetry.enabled():
        # Not even a no-op span: one costs several microseconds a message.
        yield trace.INVALID_SPAN
        return
    with _tracer().start_as_current_span(
        name, kind=kind, record_exception=False, set_status_on_exception=False
    ) as current:
        if current.is_recording():
            current.set_attribute(telemetry.SESSION_ID, session_id)
            if attributes:
                current.set_attributes(attributes)
        try:
            yield current
        except Exception as exc:
            telemetry.failed(current, type(exc).__name__)
            raise


def redis_span(
    name: str, session_id: str, operation: str
) -> contextlib.AbstractContextManager[trace.Span]:
    """A client span of one Redis round trip of the context store."""
    return span(
        name,
        session_id,
        kind=SpanKind.CLIENT,
        attributes={"db.system.name": "redis", "db.operation.name": operation},
    )


class ChatCall:
    """The span of one model call while its reply streams (see `chat`)."""

    def __init__(self, current: trace.Span, usage: Usage | None, provider: str = "") -> None:
        self.span = current
        self.recording = current.is_recording()
        self._usage = usage
        self._provider = provider
        # The reply as written, kept only when it may go on the span.
        self.written: list[str] | None = (
            [] if self.recording and telemetry.capture_content() else None
        )

    def first_token(self, ms: float) -> None:
        if self.recording:
            self.span.add_event("gen_ai.first_token", {"lva.first_token_ms": ms})
            self.span.set_attribute("lva.first_token_ms", ms)
            self.span.set_attribute("gen_ai.response.time_to_first_chunk", ms / 1000)

    def _count_tokens(self) -> None:
        usage = self._usage
        if usage is None:
            return
        provider = GENAI_PROVIDERS.get(self._provider, self._provider)
        for direction, count in (("input", usage.input_tokens), ("output", usage.output_tokens)):
            if count is not None:
                metrics.MODEL_TOKENS.labels(provider, direction).observe(count)

    def failed(self, code: str) -> None:
        telemetry.failed(self.span, code)

    def ended(self, *, cancelled: bool, stopped_early: bool) -> None:
        """The generation is over: what it cost, why it ended, what it wrote."""
        self._count_tokens()
        if not self.recording:
            return
        if cancelled:
            # The learner's cancel (or barge-in) stopped the model: not an error.
            self.span.add_event("lva.cancelled")
            self.span.set_attribute("lva.cancelled", True)
        elif stopped_early:
            # The reply had enough sentences: the responder closed the stream, so
            # the model reported no finish reason.
            self.span.set_attribute("lva.stopped_early", True)
        usage = self._usage
        if usage is not None:
            counts = {
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
                "gen_ai.usage.cache_read.input_tokens": usage.cache_read_tokens,
            }
            self.span.set_attributes({k: v for k, v in counts.items() if v is not None})
            if usage.finish_reason is not None:
                self.span.set_attribute("gen_ai.response.finish_reasons", [usage.finish_reason])
        if self.written is not None:
            finish = usage.finish_reason if usage is not None else None
            self.span.set_attribute(
                "gen_ai.output.messages", _output_messages("".join(self.written), finish)
            )


@contextlib.contextmanager
def chat(
    llm: LLMProvider,
    session_id: str,
    messages: Sequence[ChatMessage],
    *,
    max_tokens: int,
    temperature: float,
) -> Iterator[ChatCall]:
    """The CLIENT span `chat {model}` around one streamed generation; the provider
    reports its usage into it (see `providers.base.Usage`)."""
    if not telemetry.enabled():
        # No span, but the tokens are still counted for the metrics.
        with reporting_usage() as usage:
            yield ChatCall(trace.INVALID_SPAN, usage, llm.name)
        return
    with _tracer().start_as_current_span(
        f"chat {llm.model}",
        kind=SpanKind.CLIENT,
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        if not current.is_recording():
            with reporting_usage() as usage:
                yield ChatCall(trace.INVALID_SPAN, usage, llm.name)
            return
        current.set_attributes(
            {
                telemetry.SESSION_ID: session_id,
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": GENAI_PROVIDERS.get(llm.name, llm.name),
                "gen_ai.request.model": llm.model,
                "gen_ai.request.max_tokens": max_tokens,
            }
        )
        if llm.name not in _NO_TEMPERATURE:
            current.set_attribute("gen_ai.request.temperature", temperature)
        if telemetry.capture_content():
            current.set_attribute("gen_ai.input.messages", _input_messages(messages))
        with reporting_usage() as usage:
            yield ChatCall(current, usage, llm.name)


def _input_messages(messages: Sequence[ChatMessage]) -> str:
    # The conventions' shape: a role and its parts. The system prompt is the
    # same for every call and is left out.
    return json.dumps(
        [{"role": m.role, "parts": [{"type": "text", "content": m.content}]} for m in messages]
    )


def _output_messages(text: str, finish_reason: str | None) -> str:
    message: dict[str, object] = {
        "role": "assistant",
        "parts": [{"type": "text", "content": text}],
    }
    if finish_reason is not None:
        message["finish_reason"] = finish_reason
    return json.dumps([message])
