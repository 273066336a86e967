"""Fixtures of the integration tests."""

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from tests.wire.openai_server import OpenAIWireServer


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client of the test's (emptied) Redis."""
    client: Redis = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
def llm() -> Iterator[OpenAIWireServer]:
    """The OpenAI wire server, one per test module (a module may define its own)."""
    with OpenAIWireServer() as server:
        yield server


@pytest.fixture
def echo(llm: OpenAIWireServer) -> OpenAIWireServer:
    """The module's wire server, reset, repeating what it is told."""
    llm.reset()
    llm.echo = True
    return llm
