"""Spans of code under test, in memory, without installing a global tracer provider.

OpenTelemetry lets a process set its global provider once, so a test that set
one would decide it for every later test of the run. Instead `recording` makes
`trace.get_tracer_provider()` answer with a provider of the test's own for as
long as the test runs: code that looks its tracer up when it starts a span (as
`telemetry.tracer` does) records into it, with the `SessionSpans` processor the
services have.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared import telemetry


class RecordedSpans:
    def __init__(self, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> None:
        self._exporter = exporter
        self._monkeypatch = monkeypatch

    def all(self) -> list[ReadableSpan]:
        return list(self._exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.all() if span.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, f"{len(found)} spans named {name!r}: {self.names()}"
        return found[0]

    def names(self) -> list[str]:
        return [span.name for span in self.all()]

    def clear(self) -> None:
        self._exporter.clear()

    def capture_content(self, on: bool = True) -> None:
        """As OTEL_CAPTURE_CONTENT would, for the rest of the test."""
        self._monkeypatch.setattr(telemetry, "_capture_content", on)


@contextmanager
def recording(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordedSpans]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(telemetry.SessionSpans())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    monkeypatch.setattr(telemetry, "_capture_content", False)
    try:
        yield RecordedSpans(exporter, monkeypatch)
    finally:
        provider.shutdown()


def words_on(span: ReadableSpan) -> list[Any]:
    """Every value a span carries: its attributes' and its events'."""
    values: list[Any] = list((span.attributes or {}).values())
    for event in span.events:
        values.extend((event.attributes or {}).values())
    return values
