"""Request-reply over Redis Streams for the instances that hold learners' connections.

Each gateway (and later telephony) instance reads replies from a stream of its own,
`replies.<service>.<instance>`, so with several instances on one Redis every reply
reaches the one that holds the waiting connection. Requests carry that stream name
in `reply_to`; the reply carries the request id in `in_reply_to`.

Requests go out through the broker (FastStream's message format and headers, so
trace context travels with them). Replies are read with a plain XREAD loop: the
stream is private, needs no consumer group or acknowledgement, and a busy gateway
should not pay a subscriber pipeline's cost per reply.
"""

import asyncio
import contextlib
import logging
import time
from typing import cast

from faststream.redis import RedisBroker
from faststream.redis.parser import BinaryMessageFormatV1
from pydantic import BaseModel, TypeAdapter, ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.events import AnyReply
from shared.settings import CommonSettings
from shared.streams import REPLY_STREAMS, reply_stream

log = logging.getLogger(__name__)

_reply_adapter: TypeAdapter[AnyReply] = TypeAdapter(AnyReply)
_DATA = b"__data__"  # the field FastStream's producer writes a message to

HEARTBEAT_S = 30.0
# A reply stream whose owner has not beaten for this long belongs to a dead instance.
STALE_AFTER_S = 300.0
READ_BLOCK_MS = 1000
READ_BATCH = 500


class ReplyTimeoutError(Exception):
    """No reply arrived before the deadline."""


class ReplyRouter:
    def __init__(
        self,
        broker: RedisBroker,
        redis: Redis,
        settings: CommonSettings,
        service: str,
    ) -> None:
        self._broker = broker
        self._redis = redis
        self._settings = settings
        self.stream = reply_stream(service, settings.instance_id)
        self._pending: dict[str, asyncio.Future[AnyReply]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def _deliver(self, raw: bytes | None) -> None:
        try:
            body, _headers = BinaryMessageFormatV1.parse(raw or b"")
            reply = _reply_adapter.validate_json(body)
        except (ValidationError, ValueError):
            log.exception("unreadable reply on %s dropped", self.stream)
            return
        future = self._pending.get(reply.in_reply_to)
        if future is None or future.done():
            log.info("reply to %s arrived after its deadline", reply.in_reply_to)
            return
        future.set_result(reply)

    async def _read_forever(self) -> None:
        # The stream is this process's own (its instance id is new at every start),
        # so reading it from the beginning cannot pick up anyone else's replies.
        last: bytes | str = "0-0"
        while True:
            try:
                batches = cast(
                    list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]],
                    await self._redis.xread(
                        {self.stream: last}, count=READ_BATCH, block=READ_BLOCK_MS
                    ),
                )
            except (RedisError, OSError) as exc:
                log.warning("reading replies from %s failed (%s); retrying", self.stream, exc)
                await asyncio.sleep(1.0)
                continue
            for _stream, entries in batches:
                for entry_id, fields in entries:
                    last = entry_id
                    self._deliver(fields.get(_DATA))

    async def request(
        self, stream: str, message: BaseModel, request_id: str, timeout: float
    ) -> AnyReply:
        """Publish `message` to `stream` and wait for the reply to `request_id`."""
        future: asyncio.Future[AnyReply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._broker.publish(message, stream=stream, maxlen=self._settings.stream_maxlen)
            return await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            raise ReplyTimeoutError(request_id) from exc
        finally:
            self._pending.pop(request_id, None)

    async def start(self) -> None:
        await self._beat()
        self._tasks = [
            asyncio.create_task(self._read_forever(), name="reply-reader"),
            asyncio.create_task(self._beat_forever(), name="reply-heartbeat"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Redis may be gone already (shutting down together): the stream then expires
        # through the heartbeat registry of the instances that remain.
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(2.0), self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self.stream)
                pipe.zrem(REPLY_STREAMS, self.stream)
                await pipe.execute()

    async def _beat(self) -> None:
        now = time.time()
        await self._redis.zadd(REPLY_STREAMS, {self.stream: now})
        stale = await self._redis.zrangebyscore(REPLY_STREAMS, 0, now - STALE_AFTER_S)
        if stale:
            log.info("removing %d reply streams of instances that stopped", len(stale))
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(*stale)
                pipe.zrem(REPLY_STREAMS, *stale)
                await pipe.execute()

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self._beat()
            except Exception:
                log.exception("reply stream heartbeat failed")
