"""Logging set-up shared by every service.

Lines are JSON (python-json-logger), one object per record with the time, level,
logger, message, service, instance and, while a span is current, its trace and
span ids, so a collector can join logs to traces. In a terminal (or with
LOG_FORMAT=text) they are plain lines a person reads. `make run` asks for text
when it runs in a terminal, since honcho gives the services pipes, not a TTY.
"""

import logging
import sys
from typing import Literal

from opentelemetry import trace
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
LogFormat = Literal["auto", "json", "text"]


class _Context(logging.Filter):
    """Adds the service, the instance and the current span's ids to each record."""

    def __init__(self, service: str, instance_id: str) -> None:
        super().__init__()
        self._service = service
        self._instance = instance_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self._service
        record.instance = self._instance
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            record.trace_id = format(span.trace_id, "032x")
            record.span_id = format(span.span_id, "016x")
        return True


def _json_formatter() -> logging.Formatter:
    return JsonFormatter(
        "{asctime}{levelname}{name}{message}{service}{instance}",
        style="{",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        # uvicorn's copy of the message with terminal colour codes.
        reserved_attrs=[*RESERVED_ATTRS, "color_message"],
        timestamp=False,
    )


def setup_logging(
    level: str, *, service: str = "", instance_id: str = "", fmt: LogFormat = "auto"
) -> None:
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler()
    handler.addFilter(_Context(service, instance_id))
    handler.setFormatter(_json_formatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # Per-request access lines would drown the conversation logs at INFO.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
