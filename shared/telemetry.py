"""Tracing: one trace per utterance, across every service it passes through.

FastStream's telemetry middleware starts a span per publish and per consume and
carries `traceparent` in the headers of each message, so the gateway's (or
telephony's) turn, the transcription, the model call and the archive write are
one trace. Spans are exported over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT (or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set, over http/protobuf or gRPC as
OTEL_EXPORTER_OTLP_PROTOCOL (or ..._TRACES_PROTOCOL) says. Unset, no provider is
installed: the API's tracer is a no-op, the broker middleware is left out, and
tracing costs a function call per span site.

Every span carries `session.id`: a span whose parent has one gets it at start
(`SessionSpans`), and the first span of a service for a message is given it where
the session is known (`bind_session`). The learner's words go on no span unless
OTEL_CAPTURE_CONTENT is set, as OpenTelemetry's GenAI conventions advise.
"""

import logging
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, SpanKind

from shared.settings import CommonSettings

log = logging.getLogger(__name__)

SESSION_ID = "session.id"
SOURCE = "lva.source"
# Whether spans may carry what the learner said and what the companion answered.
_capture_content = False


class SessionSpans(SpanProcessor):
    """Gives each span the `session.id` of its parent span, if it has one."""

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        parent = trace.get_current_span(parent_context)
        attributes = getattr(parent, "attributes", None)
        if attributes and SESSION_ID in attributes and span.is_recording():
            span.set_attribute(SESSION_ID, attributes[SESSION_ID])

    def on_end(self, span: ReadableSpan) -> None:
        return None


def traces_endpoint(settings: CommonSettings) -> str | None:
    return settings.otel_exporter_otlp_traces_endpoint or settings.otel_exporter_otlp_endpoint


def _exporter(settings: CommonSettings) -> SpanExporter:
    protocol = settings.otel_exporter_otlp_traces_protocol or settings.otel_exporter_otlp_protocol
    # Imported here: only a process that exports needs an exporter (gRPC's is big).
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(endpoint=traces_endpoint(settings))
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    if settings.otel_exporter_otlp_traces_endpoint:
        # OTel's rule: a per-signal endpoint is used as given, the general one
        # gets the signal's path.
        endpoint = settings.otel_exporter_otlp_traces_endpoint
    else:
        endpoint = str(settings.otel_exporter_otlp_endpoint).rstrip("/") + "/v1/traces"
    return HttpExporter(endpoint=endpoint)


def setup_tracing(settings: CommonSettings, service: str) -> TracerProvider | None:
    """Install this process's tracer provider (once), or None when nothing collects."""
    global _capture_content
    _capture_content = settings.otel_capture_content
    if not traces_endpoint(settings):
        return None
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current  # a second broker of the same process
    provider = TracerProvider(
        resource=Resource.create(
            {
                "service.name": service,
                "service.namespace": "learning-voice-agent",
                "service.instance.id": settings.instance_id,
            }
        )
    )
    provider.add_span_processor(SessionSpans())
    provider.add_span_processor(BatchSpanProcessor(_exporter(settings)))
    trace.set_tracer_provider(provider)
    log.info("traces go to %s", traces_endpoint(settings))
    return provider


def broker_middlewares(settings: CommonSettings, service: str) -> tuple[Any, ...]:
    provider = setup_tracing(settings, service)
    if provider is None:
        return ()
    from faststream.redis.opentelemetry import RedisTelemetryMiddleware

    return (RedisTelemetryMiddleware(tracer_provider=provider),)


def shutdown_tracing() -> None:
    """Send the spans still buffered (a service stopping)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush(timeout_millis=5000)


def enabled() -> bool:
    """Whether spans are recorded in this process (a collector is configured)."""
    return isinstance(trace.get_tracer_provider(), TracerProvider)


def capture_content() -> bool:
    return _capture_content


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def bind_session(session_id: str, span: trace.Span | None = None) -> None:
    """Give the current span (a message's consume span, say) the session's id; the
    spans started under it inherit it."""
    span = span or trace.get_current_span()
    if span.is_recording():
        span.set_attribute(SESSION_ID, session_id)


def content(span: trace.Span, key: str, text: str) -> None:
    """Put the learner's (or companion's) words on `span`, if the operator opted in."""
    if _capture_content and span.is_recording():
        span.set_attribute(key, text)


def start_turn(session_id: str, source: str, *, own_trace: bool) -> trace.Span:
    """The span (started, not current) of one learner turn at the service that
    holds the connection; the caller ends it.

    `own_trace`: a new trace, linked to the current span (a WebSocket or relay
    connection, whose span lives as long as the connection), so each utterance is
    one trace; else a child of the current span (an HTTP request)."""
    attributes = {SESSION_ID: session_id, SOURCE: source}
    if not own_trace:
        return tracer(__name__).start_span("turn", kind=SpanKind.SERVER, attributes=attributes)
    current = trace.get_current_span().get_span_context()
    return tracer(__name__).start_span(
        "turn",
        context=otel_context.Context(),
        kind=SpanKind.SERVER,
        attributes=attributes,
        links=[Link(current)] if current.is_valid else [],
    )


def failed(span: trace.Span, code: str) -> None:
    if span.is_recording():
        span.set_status(trace.Status(trace.StatusCode.ERROR, code))
        span.set_attribute("error.type", code)


def carried(headers: dict[str, Any]) -> otel_context.Context:
    """The context a message's headers carry (its producer's span): the parent of
    work on one message of a batch, whose consume span belongs to no one trace."""
    return propagate.extract(headers)


def instrument_app(app: Any, settings: CommonSettings, service: str) -> None:
    """OpenTelemetry's FastAPI instrumentation (HTTP requests, WebSocket connections
    and their messages), when traces are collected. Health checks and the PWA's
    files are left out: they would bury the turns."""
    provider = setup_tracing(settings, service)
    if provider is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, excluded_urls="/health,/assets/,/metrics"
    )
