"""Request-reply over Redis Streams for the instances that hold learners' connections.

Each gateway (and later telephony) instance reads replies from a stream of its own,
`replies.<service>.<instance>`, so with several instances on one Redis every reply
reaches the one that holds the waiting connection. Requests carry that stream name
in `reply_to`; the reply carries the request id in `in_reply_to`.
"""

import asyncio
import contextlib
import logging
import time
from typing import Any

from faststream.redis import RedisBroker, StreamSub
from pydantic import BaseModel, TypeAdapter, ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.events import AnyReply
from shared.settings import CommonSettings
from shared.streams import REPLY_STREAMS, reply_stream

log = logging.getLogger(__name__)

_reply_adapter: TypeAdapter[AnyReply] = TypeAdapter(AnyReply)

HEARTBEAT_S = 30.0
# A reply stream whose owner has not beaten for this long belongs to a dead instance.
STALE_AFTER_S = 300.0


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
        self._heartbeat: asyncio.Task[None] | None = None
        broker.subscriber(stream=StreamSub(self.stream), title=f"{service}-replies")(self._on_reply)

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def _on_reply(self, body: dict[str, Any]) -> None:
        try:
            reply = _reply_adapter.validate_python(body)
        except ValidationError:
            log.exception("unreadable reply on %s dropped", self.stream)
            return
        future = self._pending.get(reply.in_reply_to)
        if future is None or future.done():
            log.info("reply to %s arrived after its deadline", reply.in_reply_to)
            return
        future.set_result(reply)

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
        self._heartbeat = asyncio.create_task(self._beat_forever(), name="reply-heartbeat")

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
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
