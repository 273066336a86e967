"""Broker factory and start-up helpers shared by every service."""

import asyncio
import logging
import time
from typing import Any

from faststream.redis import RedisBroker
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import metrics
from shared.settings import CommonSettings
from shared.telemetry import broker_middlewares

log = logging.getLogger(__name__)

# The first retry comes at once (the usual case: one pooled connection died with
# the old server, the next connect succeeds); later ones back off.
_RETRY_BACKOFF_BASE_S = 0.05


def connection_options(settings: CommonSettings) -> dict[str, Any]:
    """What every Redis connection of a service is opened with, broker's and own.

    Without a retry policy redis-py gives up on the first broken connection, and
    after a Redis restart every pooled connection is broken: each would fail one
    caller. With it, the command is sent again on a new connection.
    """
    return {
        "retry": Retry(
            EqualJitterBackoff(cap=settings.redis_retry_backoff_max, base=_RETRY_BACKOFF_BASE_S),
            settings.redis_retries,
        ),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "health_check_interval": settings.redis_health_check_interval,
        "socket_keepalive": True,
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": min(5.0, settings.redis_socket_timeout),
    }


def make_broker(
    settings: CommonSettings, service: str, *, middlewares: tuple[Any, ...] = ()
) -> RedisBroker:
    # Per-message "received/processed" lines go to DEBUG: at INFO an operator
    # sees what the services decide, not every stream entry.
    return RedisBroker(
        settings.redis_url,
        # redis-py's pool fails at once beyond its size instead of waiting (100 by
        # default): sized for every publish a busy gateway has in flight.
        max_connections=settings.redis_max_connections,
        log_level=logging.DEBUG,
        logger=logging.getLogger(f"lva.{service}.broker"),
        middlewares=(
            *broker_middlewares(settings, service),
            metrics.broker_middleware(service),
            *middlewares,
        ),
        # SIGTERM: handlers in flight get this long to finish before the process
        # exits; what is left stays pending, for a replica to reclaim.
        graceful_timeout=settings.shutdown_grace_s,
        **connection_options(settings),
    )


def redis_client(settings: CommonSettings) -> Redis:
    """A client for the service's own Redis work (context, claim checks, replies).

    Its pool waits for a free connection instead of failing when all are busy.
    """
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=10,
        **connection_options(settings),
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


# A health check answers at once: Redis's own retries would take seconds.
HEALTH_PING_TIMEOUT_S = 1.0


async def redis_state(redis: Redis) -> str:
    """ "ok" if Redis answers a PING within HEALTH_PING_TIMEOUT_S, else "unreachable"."""
    try:
        async with asyncio.timeout(HEALTH_PING_TIMEOUT_S):
            await redis.ping()
    except (RedisError, OSError, TimeoutError):
        return "unreachable"
    return "ok"
