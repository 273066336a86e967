"""Broker factory and start-up helpers shared by every service."""

import asyncio
import logging
import time
from collections.abc import Sequence

from faststream.redis import RedisBroker
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.settings import CommonSettings
from shared.telemetry import broker_middlewares

log = logging.getLogger(__name__)


def make_broker(settings: CommonSettings, service: str) -> RedisBroker:
    # Per-message "received/processed" lines go to DEBUG: at INFO an operator
    # sees what the services decide, not every stream entry.
    return RedisBroker(
        settings.redis_url,
        # redis-py's pool fails at once beyond its size instead of waiting (100 by
        # default): sized for every publish a busy gateway has in flight.
        max_connections=settings.redis_max_connections,
        log_level=logging.DEBUG,
        logger=logging.getLogger(f"lva.{service}.broker"),
        middlewares=broker_middlewares(settings, service),
        graceful_timeout=10.0,
    )


def redis_client(settings: CommonSettings) -> Redis:
    """A client for the service's own Redis work (context, claim checks, replies).

    Its pool waits for a free connection instead of failing when all are busy.
    """
    pool = BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=settings.redis_max_connections, timeout=10
    )
    return Redis(connection_pool=pool)


async def wait_for_redis(url: str, timeout: float) -> None:
    """Return once Redis answers PING; raise after `timeout` seconds.

    Services may start before Redis (honcho starts everything at once, compose
    restarts Redis): they wait instead of crashing.
    """
    deadline = time.monotonic() + timeout
    delay = 0.1
    client: Redis = Redis.from_url(url, socket_connect_timeout=2)
    try:
        while True:
            try:
                await client.ping()
                return
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if time.monotonic() >= deadline:
                    msg = f"Redis at {url} did not answer within {timeout:.0f} s: {exc}"
                    raise RuntimeError(msg) from exc
                log.info("waiting for Redis at %s (%s)", url, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
    finally:
        await client.aclose()


async def ensure_groups(redis: Redis, group: str, streams: Sequence[str]) -> None:
    """Create the service's consumer groups, reading from the start of each stream.

    FastStream would create them at "$" (only messages published after that moment),
    so an utterance published before a worker's very first start would be skipped.
    Created here at "0" before the broker starts, a group sees every message that
    waited for it; on later starts the groups exist and this changes nothing.
    """
    for stream in streams:
        try:
            await redis.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
