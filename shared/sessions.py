"""What the responder keeps about sessions that other services read.

- The index of active sessions, read by /api/stats without SCAN: the responder
  adds a session (score: last activity, unix seconds) each time it records an
  exchange; a session counts as active while its context lives (REDIS_TTL).
- The answer each utterance got (`Keys.exchange_done`), kept for its
  redeliveries, and read by telephony when the instance that asked is gone.
"""

import time
from datetime import datetime

from pydantic import BaseModel
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


class StoredAnswer(BaseModel):
    """What an utterance was answered with, kept for its redeliveries."""

    agent_text: str
    at: datetime
    cancelled: bool = False


def stored_answer(raw: bytes | str | None) -> StoredAnswer | None:
    if raw is None:
        return None
    try:
        return StoredAnswer.model_validate_json(raw)
    except ValueError:
        # A marker written before answers were kept ("1"): answered, text unknown.
        return None
