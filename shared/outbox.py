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
streams, and a value gone or changed means the data it was set with is gone. A
Redis that restarted with its data (a new `run_id`) may still have lost its last
writes, if it crashed (AOF `appendfsync everysec`: up to a second): then what is
kept and missing from its stream is published again.

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


def _run_id(server: Any) -> str | None:
    """The id of this run of the Redis server (INFO server): new at every start."""
    run_id = server.get("run_id") if isinstance(server, dict) else None
    return str(run_id) if run_id is not None else None


def _text_id(added: EntryId) -> str:
    return f"{added[0]}-{added[1]}"


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
        self._run_id: str | None = None
        # What could not be published again yet (Redis went away meanwhile).
        self._unsent: list[tuple[str, BaseModel]] = []

    def __len__(self) -> int:
        return sum(len(kept) for kept in self._kept.values()) + len(self._unsent)

    async def publish(self, stream: str, message: BaseModel) -> None:
        """Publish `message` to `stream` and keep it until its consumers read it."""
        added = await self._publish(stream, message)
        if self._window_s > 0 and isinstance(added, bytes | str):
            kept = self._kept.setdefault(stream, deque(maxlen=self._max_kept))
            kept.append((time.monotonic(), entry_id(added), message))

    async def start(self) -> None:
        self._epoch = await self._claim_epoch()
        self._run_id = _run_id(await self._redis.info("server"))

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
            pipe.info("server")
            for stream in streams:
                pipe.xinfo_groups(stream)
            epoch, server, *groups = await pipe.execute(raise_on_error=False)
        for answer in (epoch, server):
            if isinstance(answer, Exception):
                raise answer
        if self._unsent:
            unsent, self._unsent = self._unsent, []
            await self._publish_again(unsent, "Redis is back")
        if self._epoch is None or epoch != self._epoch:
            lost = self._epoch is not None
            self._epoch = await self._claim_epoch()
            self._run_id = _run_id(server)
            return await self._resend() if lost else 0
        run_id = _run_id(server)
        if run_id != self._run_id:
            # Restarted with its data (AOF): the last writes before a crash may be
            # missing all the same (appendfsync everysec: up to a second).
            self._run_id = run_id
            return await self._resend_missing()
        for stream, info in zip(streams, groups, strict=True):
            if isinstance(info, Exception) or not info:
                continue  # no stream or no group yet: nobody has read anything
            read = min(entry_id(g["last-delivered-id"]) for g in info)
            kept = self._kept[stream]
            while kept and kept[0][1] <= read:
                kept.popleft()
        return 0

    async def _resend_missing(self) -> int:
        """Publish again what is kept but no longer in its stream."""
        kept = [(stream, entry) for stream, entries in self._kept.items() for entry in entries]
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream, (_, added, _) in kept:
                pipe.xrange(stream, min=_text_id(added), max=_text_id(added), count=1)
            found = await pipe.execute()
        missing = [pair for pair, there in zip(kept, found, strict=True) if not there]
        for stream, entry in missing:
            self._kept[stream].remove(entry)
        messages = [(stream, message) for stream, (_, _, message) in missing]
        return await self._publish_again(messages, "Redis restarted without its last writes")

    async def _resend(self) -> int:
        kept, self._kept = self._kept, {}
        messages = [(stream, m) for stream, entries in kept.items() for _, _, m in entries]
        return await self._publish_again(messages, "Redis lost its data")

    async def _publish_again(self, messages: list[tuple[str, BaseModel]], why: str) -> int:
        sent = 0
        try:
            for stream, message in messages:
                await self.publish(stream, message)
                sent += 1
        except (RedisError, OSError) as exc:
            # Redis went away again: keep the rest for the next tick.
            log.warning("publishing again what Redis lost stopped: %s", exc)
            self._unsent.extend(messages[sent:])
        if messages:
            log.warning("%s: published again the %d messages no consumer had read", why, sent)
        return sent

    async def run(self) -> None:
        """`tick` every TICK_S until cancelled."""
        while True:
            await asyncio.sleep(TICK_S)
            try:
                await self.tick()
            except (RedisError, OSError) as exc:
                log.debug("outbox check skipped: %s", exc)
