"""Fixtures shared by every test: a private Redis server, a clean database per test, and
the spans a test makes."""

from collections.abc import Iterator

import pytest

from tests.support.redis_server import RedisServer, private_redis
from tests.support.tracing import RecordedSpans, recording


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-url",
        default=None,
        help="use this Redis instead of starting one (tests FLUSH it: never a real stack's)",
    )


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    with private_redis(request.config.getoption("--redis-url")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A Redis emptied before the test."""
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordedSpans]:
    """The spans finished during the test (see tests/support/tracing.py); content
    capture off unless the test turns it on."""
    with recording(monkeypatch) as recorded:
        yield recorded
