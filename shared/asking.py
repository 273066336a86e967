"""Asking the workers about a conversation, for every service a learner talks
through (the gateway's REST and WebSocket, telephony's webhooks and relay).

Such a service never calls a model or opens the database: it publishes an event
and waits on its own reply stream (`shared.replies.ReplyRouter`).
"""

import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from opentelemetry import trace
from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import metrics, ownership, telemetry
from shared.backlog import RETRY_AFTER_S, Backlog
from shared.cancel import request_cancel
from shared.events import (
    DEFAULT_LEARNER,
    AudioReceived,
    ConversationReply,
    DeltaReply,
    ErrorReply,
    Event,
    Reply,
    SessionEndRequested,
    Source,
    SummaryReply,
    TranscriptReply,
    UtteranceReceived,
    new_id,
    utcnow,
)
from shared.replies import ReplyRouter, ReplyTimeoutError
from shared.streams import AUDIO_RECEIVED, SESSION_END_REQUESTED, UTTERANCE_RECEIVED, Keys

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Reply)

UNAVAILABLE = "the service cannot reach its message broker right now; please try again shortly"

# HTTP status for each error a worker can report.
ERROR_STATUS = {
    "invalid_audio": 400,
    "no_speech": 400,
    "audio_too_large": 413,
    "audio_too_long": 413,
    "transcription_failed": 502,
    "internal": 500,
    "dead_letter": 500,
}


class AskError(Exception):
    """The request reached a worker, or should have, and did not succeed."""

    def __init__(
        self, reason: str, *, status: int, code: str, retry_after: int | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.code = code
        # Seconds after which trying again may succeed (HTTP's Retry-After), if known.
        self.retry_after = retry_after


def unavailable(exc: BaseException) -> AskError:
    """What a learner is told when Redis cannot be reached (its retries ran out)."""
    log.warning("Redis is unavailable: %s", exc)
    return AskError(UNAVAILABLE, status=503, code="unavailable")


def overloaded(waiting: int) -> AskError:
    """What a learner is told when the workers are too far behind to answer in time."""
    return AskError(
        f"the service is behind ({waiting} messages waiting); please try again shortly",
        status=503,
        code="busy",
        retry_after=RETRY_AFTER_S,
    )


def timed_out(timeout: float) -> AskError:
    """What a learner is told when no reply came within `timeout` seconds."""
    return AskError(
        f"no reply within {timeout:g} s; the service may be busy or down, try again",
        status=504,
        code="timeout",
    )


def session_taken(session_id: str) -> AskError:
    """What a learner is told who uses the id of another learner's session."""
    return AskError(
        f"session {session_id} belongs to another learner; start a new session",
        status=403,
        code="session_taken",
    )


class Held(Protocol):
    """Memory a caller holds for a clip until Redis has it."""

    def release(self) -> None: ...


class Conversations:
    """Events about what a learner said, and the replies to them."""

    def __init__(
        self,
        router: ReplyRouter,
        redis: Redis,
        *,
        reply_timeout: float,
        audio_ttl: int,
        backlog: Backlog | None = None,
        owner_ttl: int = 30 * 24 * 3600,
    ) -> None:
        self._router = router
        self._redis = redis
        self._reply_timeout = reply_timeout
        self._audio_ttl = audio_ttl
        self._owner_ttl = owner_ttl
        # None: every request is published, however far behind the workers are.
        self._backlog = backlog

    def _failure(self, exc: BaseException, timeout: float) -> AskError:
        if isinstance(exc, ReplyTimeoutError):
            return timed_out(timeout)
        return unavailable(exc)

    @staticmethod
    def _refusal(reply: ErrorReply) -> AskError:
        return AskError(reply.message, status=ERROR_STATUS.get(reply.code, 500), code=reply.code)

    async def _ask(
        self, stream: str, message: BaseModel, request_id: str, timeout: float, expect: type[R]
    ) -> R:
        try:
            reply = await self._router.request(stream, message, request_id, timeout)
        except (RedisError, OSError, ReplyTimeoutError) as exc:
            raise self._failure(exc, timeout) from exc
        if isinstance(reply, ErrorReply):
            raise self._refusal(reply)
        if not isinstance(reply, expect):
            raise AskError(f"unexpected {reply.kind} reply", status=500, code="internal")
        return reply

    async def _event(self, stream: str, event: Event, expect: type[R]) -> R:
        return await self._ask(stream, event, event.event_id, self._reply_timeout, expect)

    def _deadline(self, timeout: float) -> datetime:
        # Workers skip what arrives after it: the learner has been told to try again.
        return utcnow() + timedelta(seconds=timeout)

    @property
    def reply_reader_state(self) -> str:
        return self._router.reader_state

    def admit(self, stream: str, source: Source) -> None:
        """Refuse (503 `busy`) a request for `stream` while the workers it waits on
        are MAX_BACKLOG or more behind (`shared.backlog`): it would not be answered
        in time, and taking it would only grow the queue."""
        behind = self._backlog.behind(stream) if self._backlog is not None else None
        if behind is None:
            return
        metrics.REQUESTS_REFUSED.labels(source, "backlog").inc()
        raise overloaded(behind[1])

    async def claim(self, session_id: str, source: Source, learner: str) -> None:
        """Take the session for `learner` before anything about it is published;
        403 `session_taken` if it is another learner's (shared.ownership)."""
        try:
            owner = await ownership.claim(self._redis, session_id, learner, self._owner_ttl)
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc
        if owner != learner:
            metrics.REQUESTS_REFUSED.labels(source, "session_taken").inc()
            raise session_taken(session_id)

    def text_event(
        self,
        session_id: str,
        source: Source,
        text: str,
        *,
        event_id: str | None = None,
        stream: bool = False,
        caller: str | None = None,
        learner: str = DEFAULT_LEARNER,
    ) -> UtteranceReceived:
        return UtteranceReceived(
            event_id=event_id or new_id(),
            session_id=session_id,
            source=source,
            learner=learner,
            text=text,
            reply_to=self._router.stream,
            deadline=self._deadline(self._reply_timeout),
            stream=stream,
            caller=caller,
        )

    async def audio_event(
        self,
        session_id: str,
        source: Source,
        audio: bytes,
        *,
        held: Held | None = None,
        event_id: str | None = None,
        stream: bool = False,
        learner: str = DEFAULT_LEARNER,
    ) -> AudioReceived:
        """A clip: its bytes wait in Redis (claim check), the event carries the key.

        `held` is released once Redis has the bytes: the gateway holds them no longer.
        """
        event_id = event_id or new_id()
        event = AudioReceived(
            event_id=event_id,
            session_id=session_id,
            source=source,
            learner=learner,
            reply_to=self._router.stream,
            deadline=self._deadline(self._reply_timeout),
            audio_key=Keys.audio(event_id),
            size_bytes=len(audio),
            stream=stream,
        )
        try:
            # Before the clip is stored: a refused one would wait in Redis for nothing.
            self.admit(AUDIO_RECEIVED, source)
            await self._redis.set(event.audio_key, audio, ex=self._audio_ttl)
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc
        finally:
            if held is not None:
                held.release()
        return event

    async def converse(
        self, event: UtteranceReceived | AudioReceived, *, own_trace: bool = False
    ) -> AsyncGenerator[TranscriptReply | DeltaReply | ConversationReply, None]:
        """The replies to one thing the learner said: for a streaming asker, what
        was heard and the reply's pieces, then always the whole reply.

        The exchange is one span (`turn`), the parent of everything the workers do
        for it; `own_trace` makes it a trace of its own, linked to the current span
        (a connection that outlives many turns)."""
        stream = AUDIO_RECEIVED if isinstance(event, AudioReceived) else UTTERANCE_RECEIVED
        # Before the turn's span and counts: a refusal is counted apart.
        self.admit(stream, event.source)
        timeout = self._reply_timeout
        span = telemetry.start_turn(event.session_id, event.source, own_trace=own_trace)
        kind = "audio" if isinstance(event, AudioReceived) else "text"
        span.set_attribute("lva.input", kind)
        began = time.perf_counter()
        first_piece = True
        # A clip is not published again after Redis lost its data: its bytes went too.
        replies = self._router.exchange(
            stream, event, event.event_id, timeout, resendable=kind == "text"
        )
        try:
            async with aclosing(replies):
                while True:
                    # Current only while the next reply is awaited (the first await
                    # publishes): a span made current across a yield would be
                    # detached in another context when the caller stops early.
                    with trace.use_span(span, end_on_exit=False):
                        try:
                            reply = await anext(replies)
                        except StopAsyncIteration:
                            return
                    if isinstance(reply, ErrorReply):
                        raise self._refusal(reply)
                    if not isinstance(reply, TranscriptReply | DeltaReply | ConversationReply):
                        raise AskError(
                            f"unexpected {reply.kind} reply", status=500, code="internal"
                        )
                    if isinstance(reply, DeltaReply) and first_piece:
                        first_piece = False
                        metrics.FIRST_PIECE.labels(event.source).observe(
                            time.perf_counter() - began
                        )
                    if isinstance(reply, ConversationReply):
                        span.set_attribute("lva.cancelled", reply.cancelled)
                        span.set_attribute("gen_ai.response.intent", reply.intent)
                        took = time.perf_counter() - began
                        metrics.observe_reply(event.source, kind, took, reply.timings)
                        outcome = "cancelled" if reply.cancelled else "answered"
                        metrics.REPLIES.labels(event.source, outcome).inc()
                    yield reply
        except (RedisError, OSError, ReplyTimeoutError) as exc:
            failure = self._failure(exc, timeout)
            telemetry.failed(span, failure.code)
            metrics.REPLIES.labels(event.source, failure.code).inc()
            raise failure from exc
        except AskError as exc:
            telemetry.failed(span, exc.code)
            metrics.REPLIES.labels(event.source, exc.code).inc()
            raise
        finally:
            span.end()

    async def reply_to(self, event: UtteranceReceived | AudioReceived) -> ConversationReply:
        """The whole reply (v1's one answer)."""
        async with aclosing(self.converse(event)) as replies:
            async for reply in replies:
                if isinstance(reply, ConversationReply):
                    return reply
        raise AskError("the reply ended without an answer", status=500, code="internal")

    async def cancel(self, event_id: str) -> None:
        """Stop the reply to `event_id` (a learner's cancel): see `shared.cancel`."""
        try:
            await request_cancel(self._redis, event_id)
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc

    async def tell(self, stream: str, event: Event) -> None:
        """Publish `event`, which nobody answers (what the archive should know)."""
        try:
            await self._router.publish(stream, event)
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc

    async def end(
        self, session_id: str, source: Source, *, learner: str = DEFAULT_LEARNER
    ) -> SummaryReply:
        event = SessionEndRequested(
            session_id=session_id,
            source=source,
            learner=learner,
            reply_to=self._router.stream,
            deadline=self._deadline(self._reply_timeout),
        )
        return await self._event(SESSION_END_REQUESTED, event, SummaryReply)
