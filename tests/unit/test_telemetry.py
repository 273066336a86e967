"""Trace context travels in message headers only where a collector is configured."""

from typing import cast

from faststream.redis.opentelemetry import RedisTelemetryMiddleware
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from shared.settings import CommonSettings
from shared.telemetry import _exporter, broker_middlewares, instrument_app


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


def test_the_exporter_follows_otels_variables() -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcExporter,
    )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    base = CommonSettings(_env_file=None, otel_exporter_otlp_endpoint="http://collector:4318/")
    http = _exporter(base)
    # The general endpoint gets the signal's path; a traces endpoint is used as given.
    assert isinstance(http, HttpExporter) and http._endpoint == "http://collector:4318/v1/traces"
    own = base.model_copy(update={"otel_exporter_otlp_traces_endpoint": "http://t:9/x"})
    assert cast(HttpExporter, _exporter(own))._endpoint == "http://t:9/x"
    grpc = base.model_copy(
        update={
            "otel_exporter_otlp_protocol": "grpc",
            "otel_exporter_otlp_endpoint": "http://c:4317",
        }
    )
    assert isinstance(_exporter(grpc), GrpcExporter)
    # The traces-only protocol wins over the general one.
    back = grpc.model_copy(update={"otel_exporter_otlp_traces_protocol": "http/protobuf"})
    assert isinstance(_exporter(back), HttpExporter)
    http.shutdown()  # type: ignore[no-untyped-call]


def test_no_collector_leaves_the_app_uninstrumented() -> None:
    from fastapi import FastAPI

    app = FastAPI()
    settings = CommonSettings(_env_file=None, otel_exporter_otlp_endpoint=None)
    instrument_app(app, settings, "gateway")
    assert not getattr(app, "_is_instrumented_by_opentelemetry", False)
