"""Trace context travels in message headers only where a collector is configured."""

from faststream.redis.opentelemetry import RedisTelemetryMiddleware
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from shared.settings import CommonSettings
from shared.telemetry import broker_middlewares


def test_no_collector_means_no_tracing_middleware() -> None:
    settings = CommonSettings(_env_file=None, otel_exporter_otlp_endpoint=None)
    assert broker_middlewares(settings, "gateway") == ()


def test_a_collector_turns_on_the_telemetry_middleware() -> None:
    settings = CommonSettings(
        _env_file=None,
        otel_exporter_otlp_endpoint="http://127.0.0.1:4318",
    )
    (middleware,) = broker_middlewares(settings, "gateway")
    assert isinstance(middleware, RedisTelemetryMiddleware)
    # The provider is now this process's: stop its exporter, or every later test
    # that makes a span would try to send it to a collector that is not there.
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    provider.shutdown()
