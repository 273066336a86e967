"""Fixtures of the integration tests."""

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client of the test's (emptied) Redis."""
    client: Redis = Redis.from_url(redis_url)
    yield client
    await client.aclose()
