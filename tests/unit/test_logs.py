"""Logging set-up: one level for the services, per-request noise kept out, JSON
lines with the service, the instance and the current span, or text for people."""

import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider

from shared.logs import setup_logging


@pytest.mark.parametrize("chatty", ["httpx", "httpx2", "uvicorn.access"])
def test_per_request_lines_are_kept_out_at_info(chatty: str) -> None:
    setup_logging("INFO")
    logger = logging.getLogger(chatty)
    assert not logger.isEnabledFor(logging.INFO)
    assert logger.isEnabledFor(logging.WARNING)
    assert logging.getLogger("lva.responder").isEnabledFor(logging.INFO)


def _line(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    (line,) = capsys.readouterr().err.strip().splitlines()
    parsed: dict[str, object] = json.loads(line)
    return parsed


def test_json_lines_say_which_service_and_instance_logged(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging("INFO", service="responder", instance_id="vm-1", fmt="json")
    logging.getLogger("lva.test").info('a "quoted" line, with an é')
    line = _line(capsys)
    assert line["message"] == 'a "quoted" line, with an é'
    assert (line["level"], line["logger"]) == ("INFO", "lva.test")
    assert (line["service"], line["instance"]) == ("responder", "vm-1")
    assert "time" in line and "trace_id" not in line


def test_json_lines_carry_the_current_spans_ids(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", service="gateway", instance_id="vm-2", fmt="json")
    tracer = TracerProvider().get_tracer(__name__)
    with tracer.start_as_current_span("turn") as span:
        logging.getLogger("lva.test").warning("inside")
    line = _line(capsys)
    context = span.get_span_context()
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")


def test_text_lines_are_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", service="gateway", fmt="text")
    logging.getLogger("lva.test").info("plain")
    err = capsys.readouterr().err
    assert err.rstrip().endswith("INFO    lva.test: plain")
    with pytest.raises(json.JSONDecodeError):
        json.loads(err)


def test_uvicorns_coloured_copy_of_the_message_is_left_out(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging("INFO", service="gateway", fmt="json")
    # As uvicorn logs it (through a logger of our own: uvicorn's may have been
    # configured by an earlier test's server).
    logging.getLogger("lva.test").info(
        "Started server process [%d]", 7, extra={"color_message": "\x1b[36m%d\x1b[0m"}
    )
    line = _line(capsys)
    assert line["message"] == "Started server process [7]" and "color_message" not in line
