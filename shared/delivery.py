"""Redelivery of messages that a consumer took and never acknowledged.

A consumer that crashes, or a handler that raises, leaves its message pending in
the group: Redis never hands it out again on its own, and a NACK does nothing on
Redis Streams. Each worker runs a `Reclaimer` that claims entries pending longer
than RECLAIM_IDLE_MS (XAUTOCLAIM) and puts them back at the end of the stream with
a failure count, so any live replica takes them. After MAX_DELIVERIES failed
deliveries the entry goes to the `dead.letters` stream for an operator instead of
failing forever. Handlers are idempotent (event ids), so a delivery that was slow
rather than lost costs work, not correctness.
"""

import asyncio
import logging
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.settings import CommonSettings
from shared.streams import DEAD_LETTERS

log = logging.getLogger(__name__)

FAILED_FIELD = b"lva-failed"
# A consumer idle this long with nothing pending is a replica that is gone.
DEAD_CONSUMER_IDLE_MS = 3_600_000


class Reclaimer:
    def __init__(
        self,
        redis: Redis,
        settings: CommonSettings,
        *,
        stream: str,
        group: str,
    ) -> None:
        self._redis = redis
        self._settings = settings
        self.stream = stream
        self.group = group
        self.consumer = settings.instance_id

    async def run_once(self) -> int:
        """Claim every entry idle past the limit; return how many were handed back."""
        handled = 0
        start: Any = "0-0"
        while True:
            result = await self._redis.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=self._settings.reclaim_idle_ms,
                start_id=start,
                count=100,
            )
            next_id, entries = result[0], result[1]
            for entry_id, fields in entries:
                await self._hand_back(entry_id, fields)
                handled += 1
            if next_id in (b"0-0", "0-0"):
                return handled
            start = next_id

    async def _hand_back(self, entry_id: bytes, fields: dict[bytes, bytes] | None) -> None:
        if not fields:
            # Trimmed by MAXLEN while pending: nothing left to deliver.
            await self._redis.xack(self.stream, self.group, entry_id)
            return
        failed = int(fields.get(FAILED_FIELD, b"0")) + 1
        async with self._redis.pipeline(transaction=True) as pipe:
            if failed >= self._settings.max_deliveries:
                log.error(
                    "%s entry %s failed %d deliveries; moved to %s",
                    self.stream,
                    entry_id,
                    failed,
                    DEAD_LETTERS,
                )
                dead = {
                    **fields,
                    FAILED_FIELD: str(failed).encode(),
                    b"lva-stream": self.stream.encode(),
                    b"lva-group": self.group.encode(),
                    b"lva-entry": entry_id,
                }
                pipe.xadd(DEAD_LETTERS, dead, maxlen=self._settings.stream_maxlen)  # type: ignore[arg-type]
            else:
                log.warning(
                    "%s entry %s was not acknowledged in time (failure %d); delivering again",
                    self.stream,
                    entry_id,
                    failed,
                )
                again = {**fields, FAILED_FIELD: str(failed).encode()}
                pipe.xadd(self.stream, again, maxlen=self._settings.stream_maxlen)  # type: ignore[arg-type]
            pipe.xack(self.stream, self.group, entry_id)
            await pipe.execute()

    async def forget_dead_consumers(self) -> None:
        """Drop consumers of earlier processes: idle for an hour with nothing pending."""
        for info in await self._redis.xinfo_consumers(self.stream, self.group):
            name = info["name"]
            name = name.decode() if isinstance(name, bytes) else name
            if (
                name != self.consumer
                and int(info["pending"]) == 0
                and int(info["idle"]) > DEAD_CONSUMER_IDLE_MS
            ):
                await self._redis.xgroup_delconsumer(self.stream, self.group, name)

    async def run(self) -> None:
        last_cleanup = 0.0
        while True:
            try:
                await self.run_once()
                if time.monotonic() - last_cleanup > 600:
                    await self.forget_dead_consumers()
                    last_cleanup = time.monotonic()
            except RedisError as exc:
                # The group may not exist yet (subscriber still starting) or Redis
                # is briefly away: try again on the next tick.
                log.debug("reclaim of %s skipped: %s", self.stream, exc)
            await asyncio.sleep(self._settings.reclaim_interval_s)
