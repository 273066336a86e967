"""Redelivery of messages that a consumer took and never acknowledged.

A consumer that crashes, or a handler that raises, leaves its message pending in
the group: Redis never hands it out again on its own, and a NACK does nothing on
Redis Streams. Each worker runs a `Reclaimer` that claims entries pending longer
than RECLAIM_IDLE_MS (XAUTOCLAIM) and puts them back at the end of the stream with
a failure count, so any live replica takes them. After MAX_DELIVERIES failed
deliveries the entry goes to the `dead.letters` stream for an operator instead of
failing forever, and whoever waits for its reply is told so at once
(`shared.dead_letters`). Handlers are idempotent (event ids), so a delivery that was slow
rather than lost costs work, not correctness.

A live consumer keeps what it holds: on every tick its reclaimer renews its own
pending entries (XCLAIM ... JUSTID resets their idle time), so a slow model call
or a long queue inside the process never looks like a dead consumer. Only entries
it let go of (their handler raised, see `Leases`) age, and are reclaimed, and so
does one held longer than MAX_HOLD_S: its handler is stuck, not slow.
"""

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from faststream import BaseMiddleware
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from shared import dead_letters
from shared.dead_letters import FAILED_FIELD
from shared.replies import ReplySender
from shared.settings import CommonSettings
from shared.streams import DEAD_LETTERS

log = logging.getLogger(__name__)

# A consumer idle this long with nothing pending is a replica that is gone.
DEAD_CONSUMER_IDLE_MS = 3_600_000
# Pending entries read per XPENDING call when renewing.
_RENEW_BATCH = 500


class Leases:
    """The entries this process read but will not finish: their handler raised.

    Everything else this consumer has pending is being worked on, or waits in the
    process for a free worker, and is renewed. Ids leave the set once they are no
    longer pending (reclaimed by a replica, or acknowledged).
    """

    def __init__(self, *, max_hold_s: float = 600.0) -> None:
        self._let_go: defaultdict[str, set[bytes]] = defaultdict(set)
        self._max_hold_s = max_hold_s
        # When this process first renewed each entry it holds (monotonic seconds).
        self._since: defaultdict[str, dict[bytes, float]] = defaultdict(dict)

    def let_go(self, stream: str, ids: Sequence[bytes]) -> None:
        self._let_go[stream].update(ids)

    def middleware(self) -> Any:
        """A FastStream broker middleware that lets go of entries whose handler raised."""
        leases = self

        class _LetGoOnError(BaseMiddleware):
            async def after_processed(
                self,
                exc_type: type[BaseException] | None = None,
                exc_val: BaseException | None = None,
                exc_tb: TracebackType | None = None,
            ) -> bool | None:
                raw = self.msg if isinstance(self.msg, dict) else {}
                if exc_type is not None and raw.get("message_ids"):
                    leases.let_go(str(raw.get("channel", "")), list(raw["message_ids"]))
                return False

        return _LetGoOnError

    async def renew(self, redis: Redis, stream: str, group: str, consumer: str) -> int:
        """Reset the idle time of every entry this consumer still holds; return how many."""
        held: list[bytes] = []
        start: Any = "-"
        while True:
            entries = await redis.xpending_range(
                stream, group, min=start, max="+", count=_RENEW_BATCH, consumername=consumer
            )
            held.extend(_as_bytes(e["message_id"]) for e in entries)
            if len(entries) < _RENEW_BATCH:
                break
            start = b"(" + held[-1]
        let_go = self._let_go.get(stream, set())
        let_go.intersection_update(held)
        now = time.monotonic()
        since = self._since[stream]
        self._since[stream] = since = {i: since.get(i, now) for i in held}
        stuck = {i for i, first in since.items() if now - first > self._max_hold_s}
        if stuck - let_go:
            log.warning(
                "%s: %d entries held over %g s by a handler that does not finish; "
                "they are left to be reclaimed",
                stream,
                len(stuck - let_go),
                self._max_hold_s,
            )
            let_go.update(stuck)
            self._let_go[stream] = let_go
        keep: list[Any] = [i for i in held if i not in let_go]
        for chunk in range(0, len(keep), _RENEW_BATCH):
            await redis.xclaim(
                stream,
                group,
                consumer,
                min_idle_time=0,
                message_ids=keep[chunk : chunk + _RENEW_BATCH],
                justid=True,
            )
        return len(keep)


def _as_bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def is_missing_group(exc: BaseException) -> bool:
    """The error Redis gives when a stream or its consumer group does not exist."""
    return isinstance(exc, ResponseError) and "NOGROUP" in str(exc)


class Reclaimer:
    def __init__(
        self,
        redis: Redis,
        settings: CommonSettings,
        *,
        stream: str,
        group: str,
        leases: Leases,
    ) -> None:
        self._redis = redis
        self._settings = settings
        self.stream = stream
        self.group = group
        self.consumer = settings.instance_id
        self._leases = leases
        self._replies = ReplySender(redis, settings)

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
        dead = failed >= self._settings.max_deliveries
        async with self._redis.pipeline(transaction=True) as pipe:
            if dead:
                log.error(
                    "%s entry %s failed %d deliveries; moved to %s",
                    self.stream,
                    entry_id,
                    failed,
                    DEAD_LETTERS,
                )
                dead_letters.bury(
                    pipe,
                    fields,
                    stream=self.stream,
                    group=self.group,
                    entry_id=entry_id,
                    failures=failed,
                )
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
        if dead:
            # Now, not at the asker's deadline: no later delivery will answer it.
            await dead_letters.tell_asker(self._replies, fields, failed)

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

    async def tick(self) -> None:
        # Own entries first: an entry of ours must never look idle to the claim below.
        await self._leases.renew(self._redis, self.stream, self.group, self.consumer)
        await self.run_once()

    async def run(self) -> None:
        last_cleanup = 0.0
        while True:
            try:
                await self.tick()
                if time.monotonic() - last_cleanup > 600:
                    await self.forget_dead_consumers()
                    last_cleanup = time.monotonic()
            except RedisError as exc:
                # A missing group is the supervisor's to recreate (shared.supervision),
                # and Redis being away is retried: both end on a later tick.
                level = logging.DEBUG if is_missing_group(exc) else logging.WARNING
                log.log(level, "reclaim of %s skipped: %s", self.stream, exc)
            await asyncio.sleep(self._settings.reclaim_interval_s)
