"""Cancelling a reply while it is being written: a learner's cancel, a caller's barge-in.

The asking instance calls `request_cancel`: it sets `cancel:{event_id}` (for work
that has not started yet, and as the record a worker checks with each piece it
sends) and publishes the id on the `cancels` channel, so the worker busy with that
reply hears of it at once, even while it waits for the model's next token. Workers
hold a `CancelWatch`: one subscription per process, and an event per request in
progress.
"""

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.streams import CANCELS, Keys

log = logging.getLogger(__name__)

# A cancel outlives any request it can concern (replies wait at most minutes).
CANCEL_TTL_S = 600


async def request_cancel(redis: Redis, event_id: str) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(Keys.cancel(event_id), "1", ex=CANCEL_TTL_S)
        pipe.publish(CANCELS, event_id)
        await pipe.execute()


class CancelWatch:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._watched: dict[str, asyncio.Future[None]] = {}

    @contextlib.contextmanager
    def watching(self, event_id: str) -> Iterator["asyncio.Future[None]"]:
        """A future done when a cancel for `event_id` arrives while in this block
        (a future rather than an event: a callback on it costs no task)."""
        cancelled = self._watched.get(event_id)
        if cancelled is None:
            cancelled = asyncio.get_running_loop().create_future()
            self._watched[event_id] = cancelled
        try:
            yield cancelled
        finally:
            self._watched.pop(event_id, None)

    def _heard(self, event_id: str) -> None:
        cancelled = self._watched.get(event_id)
        if cancelled is not None and not cancelled.done():
            cancelled.set_result(None)

    async def run(self) -> None:
        """Listen for cancels until stopped; reconnect after Redis errors."""
        failing = False
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CANCELS)
                if failing:
                    log.warning("listening for cancels again")
                    failing = False
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        self._heard(data.decode() if isinstance(data, bytes) else str(data))
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("listening for cancels failed (%s); retrying", exc)
                failing = True
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
