"""Keeping a worker consuming when Redis loses its consumer groups.

A FLUSHALL, or a restart of a Redis that keeps nothing on disk, deletes every
stream and consumer group. FastStream's stream subscriber then meets NOGROUP, logs
it and stops for good, while the process stays up (its `app.exit()` does nothing
under uvicorn). The supervisor checks every SUPERVISE_INTERVAL_S that each group
exists, recreating a missing one from the start of its stream as at start-up, and
that each subscriber runs, starting a stopped one again. A subscriber that cannot
be started again ends the process with a non-zero status, so that whatever runs it
restarts it. The same checks answer the worker's `/health`.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from faststream.redis import RedisBroker
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from shared.process import exit_process
from shared.settings import CommonSettings

log = logging.getLogger(__name__)

# Consecutive failed starts of one subscriber before the process gives up.
MAX_RESTART_FAILURES = 3
# A subscriber still shutting down after this long is stuck: give up as well.
STOPPING_TOO_LONG_S = 60.0


async def create_group(redis: Redis, stream: str, group: str) -> bool:
    """Create `group` on `stream` reading from its start; False if it existed.

    FastStream would create it at "$" (only messages published after that moment),
    so an utterance published before a worker's very first start, or while its
    group was gone, would be skipped. At "0" a group sees every message that
    waited for it.
    """
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
        return False
    return True


async def group_exists(redis: Redis, stream: str, group: str) -> bool:
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return False
        raise
    names = {g["name"].decode() if isinstance(g["name"], bytes) else g["name"] for g in groups}
    return group in names


# A refusal that lasts is logged again every this many checks, not every second.
REFUSED_LOG_EVERY = 60


@dataclass(frozen=True)
class Subscription:
    """One subscriber of the worker as an operator sees it in `/health`."""

    stream: str
    group: str
    running: bool
    # None: unknown, Redis did not answer the last check.
    group_exists: bool | None

    @property
    def healthy(self) -> bool:
        return self.running and self.group_exists is True


def _stream_sub(subscriber: Any) -> tuple[str, str] | None:
    sub = getattr(subscriber, "stream_sub", None)
    if sub is None or not sub.group:
        return None
    return str(sub.name), str(sub.group)


class Supervisor:
    def __init__(
        self,
        broker: RedisBroker,
        settings: CommonSettings,
        *,
        give_up: Callable[[str], None] = exit_process,
    ) -> None:
        self._broker = broker
        self._settings = settings
        self._give_up = give_up
        self._redis: Redis | None = None
        self._groups: dict[tuple[str, str], bool | None] = {}
        self._failures: dict[int, int] = {}
        # Checks in a row that Redis refused (see check()).
        self._refused = 0
        self._stopping_since: dict[int, float] = {}
        self._last_check: float | None = None
        self._gave_up = False

    def _subscribers(self) -> list[tuple[Any, str, str]]:
        found = []
        for subscriber in self._broker.subscribers:
            names = _stream_sub(subscriber)
            if names is not None:
                found.append((subscriber, *names))
        return found

    def groups(self) -> list[tuple[str, str]]:
        """(stream, group) of every subscriber, each once."""
        return sorted({(stream, group) for _, stream, group in self._subscribers()})

    async def ensure_groups(self, redis: Redis) -> None:
        """Create every group the worker reads through; run before the broker starts."""
        self._redis = redis
        for stream, group in self.groups():
            await create_group(redis, stream, group)
            self._groups[(stream, group)] = True
        self._last_check = time.monotonic()

    async def check(self) -> None:
        """Recreate missing groups, then start subscribers that stopped."""
        redis = self._redis
        if redis is None:
            raise RuntimeError("Supervisor.ensure_groups() was not called")
        try:
            async with asyncio.timeout(self._settings.redis_socket_timeout):
                for stream, group in self.groups():
                    if await group_exists(redis, stream, group):
                        self._groups[(stream, group)] = True
                        continue
                    await create_group(redis, stream, group)
                    self._groups[(stream, group)] = True
                    log.warning(
                        "consumer group %r of stream %r was gone (Redis flushed, or restarted "
                        "without its data); created it again from the start of the stream",
                        group,
                        stream,
                    )
        except ResponseError as exc:
            # Redis answers, and refuses (no permission, a key of another type under
            # the stream's name, out of memory): an operator must see it, the
            # service is down until it is fixed.
            self._groups = dict.fromkeys(self._groups, None)
            self._refused = self._refused + 1
            if self._refused == 1 or self._refused % REFUSED_LOG_EVERY == 0:
                log.error("consumer groups cannot be checked or created: Redis says %s", exc)
            return
        except (RedisError, OSError, TimeoutError) as exc:
            # Redis is away: nothing can be known or fixed until it answers again.
            self._groups = dict.fromkeys(self._groups, None)
            log.debug("supervisor check skipped: %s", exc)
            return
        self._refused = 0
        for subscriber, stream, group in self._subscribers():
            if subscriber.running:
                self._failures.pop(id(subscriber), None)
                self._stopping_since.pop(id(subscriber), None)
            else:
                await self._restart(subscriber, stream, group)
        self._last_check = time.monotonic()

    async def _restart(self, subscriber: Any, stream: str, group: str) -> None:
        key = id(subscriber)
        if getattr(subscriber, "tasks", None):
            # Still stopping: it waits for its handlers in flight to finish first.
            since = self._stopping_since.setdefault(key, time.monotonic())
            if time.monotonic() - since > STOPPING_TOO_LONG_S:
                self._fail(f"the subscriber of {stream!r} has been stopping for too long")
            return
        self._stopping_since.pop(key, None)
        try:
            await subscriber.start()
        except Exception as exc:
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
            log.error(
                "the subscriber of %r (group %r) could not be started again (%d of %d): %s",
                stream,
                group,
                failures,
                MAX_RESTART_FAILURES,
                exc,
            )
            if failures >= MAX_RESTART_FAILURES:
                self._fail(f"the subscriber of {stream!r} cannot be started again")
            return
        self._failures.pop(key, None)
        log.warning("the subscriber of %r (group %r) had stopped; it consumes again", stream, group)

    def _fail(self, reason: str) -> None:
        if not self._gave_up:
            self._gave_up = True
            self._give_up(reason)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.supervise_interval_s)
            try:
                await self.check()
            except Exception:
                log.exception("supervisor check failed")

    def subscriptions(self) -> list[Subscription]:
        return [
            Subscription(
                stream=stream,
                group=group,
                running=bool(subscriber.running),
                group_exists=self._groups.get((stream, group)),
            )
            for subscriber, stream, group in self._subscribers()
        ]

    @property
    def checking(self) -> bool:
        """Whether checks have succeeded lately (a few intervals, or Redis's timeout)."""
        if self._last_check is None:
            return False
        window = max(5 * self._settings.supervise_interval_s, self._settings.redis_socket_timeout)
        return time.monotonic() - self._last_check <= window
