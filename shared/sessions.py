"""The index of active sessions, read by /api/stats without SCAN.

The responder adds a session (score: last activity, unix seconds) each time it
records an exchange; a session counts as active while its context lives (REDIS_TTL).
"""

import time

from redis.asyncio import Redis

from shared.streams import Keys


async def active_sessions(redis: Redis, ttl_s: int, max_ids: int) -> tuple[int, list[str]]:
    """Return (how many sessions are active, the ids of the most recent `max_ids`)."""
    cutoff = time.time() - ttl_s
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zremrangebyscore(Keys.ACTIVE_SESSIONS, "-inf", f"({cutoff}")
        pipe.zcard(Keys.ACTIVE_SESSIONS)
        pipe.zrevrange(Keys.ACTIVE_SESSIONS, 0, max_ids - 1)
        _, count, ids = await pipe.execute()
    return int(count), [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
