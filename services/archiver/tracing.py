"""Spans of the archive's work, in the traces of the turns they serve.

Exchanges are written in batches, and a batch's consume span belongs to no one
trace (FastStream starts a new one, linked to each message). So each exchange of
a batch gets a span of its own, a child of the span that published it: the
archive write shows up in the trace of the utterance, with the batch's size.
"""

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry import trace

from shared import telemetry
from shared.events import CallRecorded, ExchangeCompleted, ReplyInterrupted

_tracer = telemetry.tracer(__name__)


@contextlib.contextmanager
def writing(
    name: str,
    items: Sequence[ExchangeCompleted | ReplyInterrupted | CallRecorded],
    headers: Sequence[dict[str, Any]],
) -> Iterator[None]:
    """A span per item (`headers[i]` carries the trace of `items[i]`) while the
    batch is written; an error marks them all."""
    if not telemetry.enabled():
        yield
        return
    attributes: dict[str, str | int] = {
        "db.system.name": "sqlite",
        "db.operation.batch.size": len(items),
    }
    spans = [
        _tracer.start_span(
            name,
            context=telemetry.carried(carried),
            attributes={**attributes, telemetry.SESSION_ID: item.session_id},
        )
        for item, carried in zip(items, headers, strict=True)
    ]
    try:
        yield
    except Exception as exc:
        for span in spans:
            span.record_exception(exc)
            telemetry.failed(span, type(exc).__name__)
        raise
    finally:
        for span in spans:
            span.end()


@contextlib.contextmanager
def querying(kind: str, session_id: str | None) -> Iterator[trace.Span]:
    """The span of one archive query, under its consume span."""
    attributes: dict[str, Any] = {"db.system.name": "sqlite", "db.operation.name": kind}
    if session_id is not None:
        attributes[telemetry.SESSION_ID] = session_id
    with _tracer.start_as_current_span(f"archive.{kind}", attributes=attributes) as span:
        yield span
