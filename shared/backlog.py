"""How far the workers are behind, so that an asker refuses what they cannot answer
in time instead of queueing it (back-pressure).

The gateway and telephony each read the backlog of the streams a learner's request
goes to every READ_EVERY_S, in the background: a request compares with the last
reading and costs Redis nothing. While MAX_BACKLOG or more entries of a stream wait
for its workers, a request that would go there is refused (503 / an `error` with
code `busy` / the caller's apology) before anything is published; the stream then
holds at most MAX_BACKLOG, plus what every instance took within one reading.

What counts as waiting is the group's lag, the entries no worker has been given
yet. Pending entries (delivered, not acknowledged) do not count: every worker
claims at most what it works on at once (its subscriber's `max_records` is its
concurrency), so they are work under way, bounded by replicas x concurrency, and
they do get answered. The lag is what queues behind them, and what grows without
bound when the workers fall behind or stop.

A reading that fails or is stale (Redis away, or slow to answer the gauge) is
unknown, and unknown refuses nothing: the publish itself then fails with the
usual `unavailable`.
"""

import asyncio
import logging
import math
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from shared import metrics
from shared.streams import AUDIO_RECEIVED, UTTERANCE_RECEIVED, Groups

log = logging.getLogger(__name__)

# The streams a learner's request is published to, and the group that takes each.
WATCHED: dict[str, str] = {
    UTTERANCE_RECEIVED: Groups.RESPONDER,
    AUDIO_RECEIVED: Groups.TRANSCRIBER,
}
# The streams a request published to a stream waits on: a clip is transcribed,
# then answered as text is, so a responder far behind cannot answer it in time either.
PATH: dict[str, tuple[str, ...]] = {
    UTTERANCE_RECEIVED: (UTTERANCE_RECEIVED,),
    AUDIO_RECEIVED: (AUDIO_RECEIVED, UTTERANCE_RECEIVED),
}
# Often enough that a burst adds little past the limit, for two cheap reads a time.
READ_EVERY_S = 0.5
# A reading older than this is not trusted: the gauge could not read since.
STALE_AFTER_S = 5.0
# What a refused client is told to wait (Retry-After, whole seconds): a backlog
# of MAX_BACKLOG takes the workers seconds to work down, not milliseconds.
RETRY_AFTER_S = 5


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def waiting(redis: Redis, stream: str, group: str) -> int:
    """Entries of `stream` that no consumer of `group` has been given yet."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return 0
        raise
    for info in groups:
        if _text(info["name"]) == group:
            return await metrics.group_lag(redis, stream, info)
    # No group yet (no worker has started since Redis was empty): a worker creates
    # its group at the start of the stream (shared.supervision), so all of it waits.
    return int(await redis.xlen(stream))


class Backlog:
    """The last reading of every watched stream's backlog, kept fresh by `run()`."""

    def __init__(
        self,
        redis: Redis,
        limit: int,
        *,
        every_s: float = READ_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        # 0: no limit, and nothing read.
        self.limit = limit
        self._every_s = every_s
        self._clock = clock
        self._readings: dict[str, int] = {}
        self._read_at = -math.inf
        # Streams at or over the limit at the last reading, to log changes once.
        self._over: set[str] = set()

    def behind(self, stream: str) -> tuple[str, int] | None:
        """The stream, on the way of a request published to `stream`, with
        MAX_BACKLOG or more entries waiting, and how many; None if it may go."""
        if self.limit <= 0 or self._clock() - self._read_at > STALE_AFTER_S:
            return None
        for on_the_way in PATH.get(stream, (stream,)):
            count = self._readings.get(on_the_way, 0)
            if count >= self.limit:
                return on_the_way, count
        return None

    async def read(self) -> None:
        """Read every watched stream's backlog now."""
        readings = {
            stream: await waiting(self._redis, stream, group) for stream, group in WATCHED.items()
        }
        self._readings, self._read_at = readings, self._clock()
        over = {stream for stream, count in readings.items() if count >= self.limit}
        for stream in sorted(over - self._over):
            log.warning(
                "%d entries of %s wait for the %s (MAX_BACKLOG %d): requests for it are refused",
                readings[stream],
                stream,
                WATCHED[stream],
                self.limit,
            )
        for stream in sorted(self._over - over):
            log.info("%s is below MAX_BACKLOG again: requests for it are taken", stream)
        self._over = over

    def forget(self) -> None:
        """The backlog is unknown (it could not be read): refuse nothing."""
        self._readings, self._read_at = {}, -math.inf

    async def run(self) -> None:
        """`read()` every READ_EVERY_S, until cancelled; with no limit, nothing."""
        if self.limit <= 0:
            return
        while True:
            try:
                await self.read()
            except (RedisError, OSError) as exc:
                self.forget()
                log.debug("backlog not read: %s", exc)
            await asyncio.sleep(self._every_s)
