"""What a service published and no consumer has read yet, to publish again when
Redis loses its data.

A FLUSHALL, or a restart of a Redis that keeps nothing on disk, deletes every
stream, and with them the messages no consumer had read: an utterance waiting for
the responder, an exchange waiting for the archiver. Their publisher is the only
one left that knows them. So each publisher keeps what it published until every
consumer group of its stream has read past it (XINFO GROUPS `last-delivered-id`),
and publishes again what it still keeps once it learns that Redis lost its data.

It learns it from `data.epoch`, a random value the first service sets: twice
a second (`TICK_S`) each outbox reads it, in one transaction with the groups of its
streams, and a value gone or changed means the data it was set with is gone.

A message read by a consumer before the loss is not published again: that
consumer holds it and finishes it. Consumers are idempotent (event ids) all the
same, so a message sent twice costs a second handling, never a second effect.
"""

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.streams import Keys

log = logging.getLogger(__name__)

# Publishes a message to a stream and returns its entry id (XADD's answer).
Publish = Callable[[str, BaseModel], Awaitable[Any]]

TICK_S = 0.5
# However busy the service, it keeps at most this many messages.
MAX_KEPT = 20_000

EntryId = tuple[int, int]
# The id of a message that could not be published again yet: no group reads past it.
_UNSENT: EntryId = (2**63, 0)


def entry_id(value: bytes | str) -> EntryId:
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class Outbox:
    def __init__(
        self, redis: Redis, publish: Publish, *, window_s: float, max_kept: int = MAX_KEPT
    ) -> None:
        self._redis = redis
        self._publish = publish
        # Kept no longer than this: what waited that long is past its asker's
        # deadline, or belongs to a consumer gone for that long.
        self._window_s = window_s
        self._max_kept = max_kept
        self._kept: dict[str, deque[tuple[float, EntryId, BaseModel]]] = {}
        self._epoch: bytes | None = None

    def __len__(self) -> int:
        return sum(len(kept) for kept in self._kept.values())

    async def publish(self, stream: str, message: BaseModel) -> None:
        """Publish `message` to `stream` and keep it until its consumers read it."""
        added = await self._publish(stream, message)
        if self._window_s > 0 and isinstance(added, bytes | str):
            kept = self._kept.setdefault(stream, deque(maxlen=self._max_kept))
            kept.append((time.monotonic(), entry_id(added), message))

    async def start(self) -> None:
        self._epoch = await self._claim_epoch()

    async def _claim_epoch(self) -> bytes | None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(Keys.DATA_EPOCH, uuid.uuid4().hex, nx=True)
            pipe.get(Keys.DATA_EPOCH)
            _, epoch = await pipe.execute()
        return epoch if isinstance(epoch, bytes) else None

    def _forget_old(self) -> None:
        oldest = time.monotonic() - self._window_s
        for kept in self._kept.values():
            while kept and kept[0][0] < oldest:
                kept.popleft()

    async def tick(self) -> int:
        """Forget what every group has read; publish again what Redis lost.
        Returns how many were published again."""
        self._forget_old()
        streams = [stream for stream, kept in self._kept.items() if kept]
        # One transaction: the groups read belong to the data the epoch names.
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(Keys.DATA_EPOCH)
            for stream in streams:
                pipe.xinfo_groups(stream)
            epoch, *groups = await pipe.execute(raise_on_error=False)
        if isinstance(epoch, Exception):
            raise epoch
        if self._epoch is None or epoch != self._epoch:
            lost = self._epoch is not None
            self._epoch = await self._claim_epoch()
            return await self._resend() if lost else 0
        for stream, info in zip(streams, groups, strict=True):
            if isinstance(info, Exception) or not info:
                continue  # no stream or no group yet: nobody has read anything
            read = min(entry_id(g["last-delivered-id"]) for g in info)
            kept = self._kept[stream]
            while kept and kept[0][1] <= read:
                kept.popleft()
        return 0

    async def _resend(self) -> int:
        kept, self._kept = self._kept, {}
        messages = [(stream, m) for stream, entries in kept.items() for _, _, m in entries]
        sent = 0
        try:
            for stream, message in messages:
                await self.publish(stream, message)
                sent += 1
        except (RedisError, OSError) as exc:
            # Redis went away again: keep the rest for the next tick.
            log.warning("publishing again what Redis lost stopped: %s", exc)
            for stream, message in messages[sent:]:
                entries = self._kept.setdefault(stream, deque(maxlen=self._max_kept))
                entries.append((time.monotonic(), _UNSENT, message))
        if messages:
            log.warning(
                "Redis lost its data: published again the %d messages no consumer had read", sent
            )
        return sent

    async def run(self) -> None:
        """`tick` every TICK_S until cancelled."""
        while True:
            await asyncio.sleep(TICK_S)
            try:
                await self.tick()
            except (RedisError, OSError) as exc:
                log.debug("outbox check skipped: %s", exc)
