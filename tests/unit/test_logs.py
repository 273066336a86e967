"""Logging set-up: one level for the services, per-request noise kept out."""

import logging

import pytest

from shared.logs import setup_logging


@pytest.mark.parametrize("chatty", ["httpx", "httpx2", "uvicorn.access"])
def test_per_request_lines_are_kept_out_at_info(chatty: str) -> None:
    setup_logging("INFO")
    logger = logging.getLogger(chatty)
    assert not logger.isEnabledFor(logging.INFO)
    assert logger.isEnabledFor(logging.WARNING)
    assert logging.getLogger("lva.responder").isEnabledFor(logging.INFO)
