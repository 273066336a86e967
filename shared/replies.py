"""Request-reply over Redis Streams for the instances that hold learners' connections.

Each gateway (and later telephony) instance reads replies from a stream of its own,
`replies.<service>.<instance>`, so with several instances on one Redis every reply
reaches the one that holds the waiting connection. Requests carry that stream name
in `reply_to`; the reply carries the request id in `in_reply_to`.

Requests go out through the broker (FastStream's message format and headers, so
trace context travels with them). Replies are read with a plain XREAD loop: the
stream is private, needs no consumer group or acknowledgement, and a busy gateway
should not pay a subscriber pipeline's cost per reply.

Workers answer through `ReplySender`, which writes only to a reply stream whose
instance is registered: a reply that comes after its instance stopped (and deleted
its stream) is dropped instead of creating a stream nobody would ever delete.
"""

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import cast

from faststream.redis import RedisBroker
from faststream.redis.parser import BinaryMessageFormatV1
from opentelemetry import propagate
from pydantic import BaseModel, TypeAdapter, ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.events import PARTIAL_REPLIES, AnyReply, ConversationReply, DeltaReply, Reply
from shared.outbox import Outbox
from shared.settings import CommonSettings
from shared.streams import REPLY_STREAMS, Keys, reply_stream
from shared.tasks import cancel_all

log = logging.getLogger(__name__)

_reply_adapter: TypeAdapter[AnyReply] = TypeAdapter(AnyReply)
_DATA = b"__data__"  # the field FastStream's producer writes a message to

# An instance re-registers this often; after a Redis flush its replies are dropped
# for at most this long.
HEARTBEAT_S = 5.0
# A reply stream whose owner has not beaten for this long belongs to a dead instance.
STALE_AFTER_S = 300.0
READ_BLOCK_MS = 1000
READ_BATCH = 500
# A member of the registry that is no reply stream (its score never goes stale).
REGISTRY_MARK = "(registry)"
# The reader counts as running while its last read returned this recently.
READER_STALE_S = READ_BLOCK_MS / 1000 * 5

# KEYS: reply stream, registry, and optionally a cancel key. ARGV: maxlen, field,
# data, ttl for an unowned stream. With the cancel key set, nothing is sent (-1):
# the piece belongs to a reply its asker stopped.
# A registered stream takes the reply. An unregistered one takes nothing while the
# registry exists (its instance stopped). With no registry at all, Redis lost its
# data (a flush, or a restart without persistence) and registrations come back
# within a heartbeat: the reply is delivered, and a stream it had to create expires
# unless its instance registers again (which removes the expiry).
_SEND = """
if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
if not redis.call('ZSCORE', KEYS[2], KEYS[1]) then
  if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', ARGV[2], ARGV[3])
  if redis.call('TTL', KEYS[1]) == -1 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
  return 1
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', ARGV[2], ARGV[3])
return 1
"""


class Sent(enum.Enum):
    DELIVERED = 1
    # Nobody waits for it: no asker, or its instance stopped.
    NOBODY = 0
    # Not sent: the asker cancelled the reply this piece belongs to.
    CANCELLED = -1


class ReplySender:
    """Sends a worker's replies to the reply stream of the instance that asked."""

    def __init__(self, redis: Redis, settings: CommonSettings) -> None:
        self._maxlen = settings.reply_stream_maxlen
        self._script = redis.register_script(_SEND)

    async def send(self, reply: Reply, reply_to: str | None) -> bool:
        """Deliver `reply`; False when nobody waits for it (no asker, or gone)."""
        return await self.deliver(reply, reply_to) is Sent.DELIVERED

    async def deliver(
        self, reply: Reply, reply_to: str | None, *, unless_cancelled: str | None = None
    ) -> Sent:
        """Deliver `reply`, unless the request `unless_cancelled` was cancelled."""
        if not reply_to:
            return Sent.NOBODY
        headers: dict[str, str] = {
            "content-type": "application/json",
            "correlation_id": reply.in_reply_to,
        }
        # The consume span of the request is current here: the reply joins its trace.
        propagate.inject(headers)
        data = await BinaryMessageFormatV1.encode(
            message=reply.model_dump_json().encode(),
            reply_to=None,
            headers=headers,
            correlation_id=reply.in_reply_to,
        )
        keys = [reply_to, REPLY_STREAMS]
        if unless_cancelled is not None:
            keys.append(Keys.cancel(unless_cancelled))
        sent = Sent(
            await self._script(keys=keys, args=[self._maxlen, _DATA, data, int(STALE_AFTER_S)])
        )
        if sent is Sent.NOBODY:
            log.info(
                "reply to %s dropped: %s belongs to an instance that stopped",
                reply.in_reply_to,
                reply_to,
            )
        return sent


class ReplyTimeoutError(Exception):
    """No reply arrived before the deadline."""


def coalesce_pieces(
    first: DeltaReply, queue: "asyncio.Queue[AnyReply]"
) -> tuple[DeltaReply, AnyReply | None]:
    """`first` joined with the pieces already waiting behind it, and the first
    reply after them that is not a piece (if one is waiting)."""
    texts = [first.text]
    while not queue.empty():
        nxt = queue.get_nowait()
        if not isinstance(nxt, DeltaReply):
            return _joined(first, texts), nxt
        texts.append(nxt.text)
    return _joined(first, texts), None


def _joined(first: DeltaReply, texts: list[str]) -> DeltaReply:
    return first if len(texts) == 1 else first.model_copy(update={"text": "".join(texts)})


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
        # Replies of each request still awaited, in arrival order.
        self._pending: dict[str, asyncio.Queue[AnyReply]] = {}
        # What this instance published and no worker has read yet (shared.outbox).
        self._outbox = Outbox(redis, self._publish, window_s=settings.flush_resend_s)
        self._tasks: list[asyncio.Task[None]] = []
        self._last_read: float | None = None

    @property
    def reader_state(self) -> str:
        """ "ok" while replies are being read, "reconnecting" while Redis is away,
        "stopped" if the reader is not running at all."""
        reader = self._tasks[0] if self._tasks else None
        if reader is None or reader.done():
            return "stopped"
        if self._last_read is None or time.monotonic() - self._last_read > READER_STALE_S:
            return "reconnecting"
        return "ok"

    def _deliver(self, raw: bytes | None) -> None:
        try:
            body, _headers = BinaryMessageFormatV1.parse(raw or b"")
            reply = _reply_adapter.validate_json(body)
        except (ValidationError, ValueError):
            log.exception("unreadable reply on %s dropped", self.stream)
            return
        queue = self._pending.get(reply.in_reply_to)
        if queue is None:
            log.info("reply to %s arrived after its deadline", reply.in_reply_to)
            return
        queue.put_nowait(reply)

    async def _read_forever(self) -> None:
        # The stream is this process's own (its instance id is new at every start),
        # so reading it from the beginning cannot pick up anyone else's replies.
        last: bytes | str = "0-0"
        failing = False
        while True:
            try:
                batches = cast(
                    list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]],
                    await self._redis.xread(
                        {self.stream: last}, count=READ_BATCH, block=READ_BLOCK_MS
                    ),
                )
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("reading replies from %s failed (%s); retrying", self.stream, exc)
                failing = True
                await asyncio.sleep(1.0)
                continue
            except Exception:
                # Anything else (a client bug, an answer it cannot parse) must not
                # end the reader for good: every asker of this instance would wait
                # in vain while its health says "stopped".
                log.exception("reading replies from %s failed unexpectedly; retrying", self.stream)
                failing = True
                await asyncio.sleep(1.0)
                continue
            if failing:
                log.warning("reading replies from %s again", self.stream)
                failing = False
            self._last_read = time.monotonic()
            for _stream, entries in batches:
                for entry_id, fields in entries:
                    last = entry_id
                    self._deliver(fields.get(_DATA))

    async def exchange(
        self,
        stream: str,
        message: BaseModel,
        request_id: str,
        timeout: float,
        *,
        resendable: bool = True,
    ) -> AsyncGenerator[AnyReply, None]:
        """Publish `message` to `stream` and yield its replies as they arrive: any
        partial ones (a transcript, pieces of the reply), then the one that ends it.

        The whole exchange, publishing included, ends after `timeout` seconds with
        ReplyTimeoutError. A RedisError means the request could not be published.
        Pieces that arrived together while the caller was busy come as one: a slow
        reader gets fewer, larger pieces, never a backlog of small ones.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        queue: asyncio.Queue[AnyReply] = asyncio.Queue()
        self._pending[request_id] = queue
        try:
            try:
                async with asyncio.timeout(timeout):
                    if resendable:
                        await self._outbox.publish(stream, message)
                    else:
                        await self._publish(stream, message)
            except TimeoutError as exc:
                raise ReplyTimeoutError(request_id) from exc
            while True:
                try:
                    reply = await asyncio.wait_for(queue.get(), deadline - loop.time())
                except TimeoutError as exc:
                    raise ReplyTimeoutError(request_id) from exc
                if isinstance(reply, DeltaReply):
                    reply, after = coalesce_pieces(reply, queue)
                    if isinstance(after, ConversationReply) and after.last_piece:
                        # The last piece came with the reply: one piece, then the reply.
                        reply = reply.model_copy(
                            update={"text": reply.text + after.last_piece, "last": True}
                        )
                        after = after.model_copy(update={"last_piece": None})
                    yield reply
                    if after is None:
                        continue
                    reply = after
                elif isinstance(reply, ConversationReply) and reply.last_piece:
                    yield DeltaReply(
                        in_reply_to=reply.in_reply_to,
                        session_id=reply.session_id,
                        text=reply.last_piece,
                        last=True,
                    )
                    reply = reply.model_copy(update={"last_piece": None})
                yield reply
                if not isinstance(reply, PARTIAL_REPLIES):
                    return
        finally:
            self._pending.pop(request_id, None)

    async def _publish(self, stream: str, message: BaseModel) -> bytes:
        return await self._broker.publish(
            message, stream=stream, maxlen=self._settings.stream_maxlen
        )

    async def publish(self, stream: str, message: BaseModel) -> None:
        """Publish `message` to `stream`, expecting no reply (a RedisError if it
        could not be)."""
        await self._outbox.publish(stream, message)

    async def request(
        self, stream: str, message: BaseModel, request_id: str, timeout: float
    ) -> AnyReply:
        """Publish `message` to `stream` and return the reply that ends the request."""
        async with aclosing(self.exchange(stream, message, request_id, timeout)) as replies:
            async for reply in replies:
                if not isinstance(reply, PARTIAL_REPLIES):
                    return reply
        raise ReplyTimeoutError(request_id)

    async def start(self) -> None:
        await self.beat()
        await self._outbox.start()
        self._tasks = [
            asyncio.create_task(self._read_forever(), name="reply-reader"),
            asyncio.create_task(self._beat_forever(), name="reply-heartbeat"),
            asyncio.create_task(self._outbox.run(), name="outbox"),
        ]

    async def stop(self) -> None:
        await cancel_all(self._tasks, "reply router task")
        # Redis may be gone already (shutting down together): the stream then expires
        # through the heartbeat registry of the instances that remain.
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(2.0), self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self.stream)
                pipe.zrem(REPLY_STREAMS, self.stream)
                await pipe.execute()

    async def beat(self) -> None:
        """Register (again) and refresh this instance's reply stream; sweep dead ones."""
        now = time.time()
        async with self._redis.pipeline(transaction=True) as pipe:
            # The registry outlives its last member: once every instance stopped, a
            # late reply finds it and is dropped, rather than taken for a flush.
            pipe.zadd(REPLY_STREAMS, {REGISTRY_MARK: "+inf"})
            pipe.zadd(REPLY_STREAMS, {self.stream: now})
            # A reply written while the registry was lost set an expiry: it is ours.
            pipe.persist(self.stream)
            pipe.zrangebyscore(REPLY_STREAMS, 0, now - STALE_AFTER_S)
            _, added, _, stale = await pipe.execute()
        if added and self._tasks:
            log.warning(
                "%s was no longer registered (Redis lost its data); registered again",
                self.stream,
            )

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
                await self.beat()
            except (RedisError, OSError) as exc:
                log.warning("reply stream heartbeat failed: %s", exc)
            except Exception:
                log.exception("reply stream heartbeat failed")
