"""Tracing set-up: W3C trace context travels in message headers.

FastStream's telemetry middleware starts a span per publish and per consume and
carries `traceparent` in the headers of each message, so one utterance is one trace
across the services it touches. Spans are exported over OTLP/HTTP only when
OTEL_EXPORTER_OTLP_ENDPOINT is set; otherwise the middleware is left out, since
context nobody collects is not worth its cost per message.
"""

from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from shared.settings import CommonSettings


def setup_tracing(settings: CommonSettings, service: str) -> TracerProvider | None:
    if not settings.otel_exporter_otlp_endpoint:
        return None
    # Imported here: the exporter is only needed where a collector is configured.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": service, "service.instance.id": settings.instance_id}
        )
    )
    endpoint = settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    return provider


def broker_middlewares(settings: CommonSettings, service: str) -> tuple[Any, ...]:
    provider = setup_tracing(settings, service)
    if provider is None:
        return ()
    from faststream.redis.opentelemetry import RedisTelemetryMiddleware

    return (RedisTelemetryMiddleware(tracer_provider=provider),)
