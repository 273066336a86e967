"""What the gateway asks of the workers, for REST and WebSocket alike.

The gateway never calls a model or opens the database: it publishes a request
and waits on its own reply stream (shared.replies.ReplyRouter).
"""

from typing import TypeVar

from pydantic import BaseModel
from redis.asyncio import Redis

from services.gateway.settings import GatewaySettings
from shared.events import (
    ArchiveQuery,
    AudioReceived,
    ConversationReply,
    ErrorReply,
    Event,
    HistoryQuery,
    HistoryReply,
    Reply,
    SearchQuery,
    SearchReply,
    SessionEndRequested,
    Source,
    StatsQuery,
    StatsReply,
    SummaryReply,
    UtteranceReceived,
    new_id,
)
from shared.replies import ReplyRouter, ReplyTimeoutError
from shared.streams import (
    ARCHIVE_QUERIES,
    AUDIO_RECEIVED,
    SESSION_END_REQUESTED,
    UTTERANCE_RECEIVED,
    Keys,
)

R = TypeVar("R", bound=Reply)

# HTTP status for each error a worker can report.
ERROR_STATUS = {
    "invalid_audio": 400,
    "no_speech": 400,
    "audio_too_large": 413,
    "audio_too_long": 413,
    "transcription_failed": 502,
    "internal": 500,
}


class BackendError(Exception):
    """The request reached a worker, or should have, and did not succeed."""

    def __init__(self, reason: str, *, status: int, code: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.code = code


class Backend:
    def __init__(self, router: ReplyRouter, redis: Redis, settings: GatewaySettings) -> None:
        self._router = router
        self._redis = redis
        self._settings = settings

    async def _ask(
        self, stream: str, message: BaseModel, request_id: str, timeout: float, expect: type[R]
    ) -> R:
        try:
            reply = await self._router.request(stream, message, request_id, timeout)
        except ReplyTimeoutError as exc:
            raise BackendError(
                f"no reply within {timeout:g} s; the service may be busy or down, try again",
                status=504,
                code="timeout",
            ) from exc
        if isinstance(reply, ErrorReply):
            raise BackendError(
                reply.message, status=ERROR_STATUS.get(reply.code, 500), code=reply.code
            )
        if not isinstance(reply, expect):
            raise BackendError(f"unexpected {reply.kind} reply", status=500, code="internal")
        return reply

    async def _event(self, stream: str, event: Event, expect: type[R]) -> R:
        return await self._ask(stream, event, event.event_id, self._settings.reply_timeout, expect)

    async def _query(self, query: ArchiveQuery, expect: type[R]) -> R:
        return await self._ask(
            ARCHIVE_QUERIES, query, query.query_id, self._settings.archive_timeout, expect
        )

    async def say(self, session_id: str, source: Source, text: str) -> ConversationReply:
        event = UtteranceReceived(
            session_id=session_id, source=source, text=text, reply_to=self._router.stream
        )
        return await self._event(UTTERANCE_RECEIVED, event, ConversationReply)

    async def hear(self, session_id: str, source: Source, audio: bytes) -> ConversationReply:
        """A clip: its bytes wait in Redis (claim check), the event carries the key."""
        event_id = new_id()
        event = AudioReceived(
            event_id=event_id,
            session_id=session_id,
            source=source,
            reply_to=self._router.stream,
            audio_key=Keys.audio(event_id),
            size_bytes=len(audio),
        )
        await self._redis.set(event.audio_key, audio, ex=self._settings.audio_ttl)
        return await self._event(AUDIO_RECEIVED, event, ConversationReply)

    async def end(self, session_id: str, source: Source) -> SummaryReply:
        event = SessionEndRequested(
            session_id=session_id, source=source, reply_to=self._router.stream
        )
        return await self._event(SESSION_END_REQUESTED, event, SummaryReply)

    async def search(self, query: str, limit: int) -> SearchReply:
        return await self._query(
            SearchQuery(query=query, limit=limit, reply_to=self._router.stream), SearchReply
        )

    async def history(self, session_id: str, limit: int) -> HistoryReply:
        return await self._query(
            HistoryQuery(session_id=session_id, limit=limit, reply_to=self._router.stream),
            HistoryReply,
        )

    async def stats(self) -> StatsReply:
        return await self._query(StatsQuery(reply_to=self._router.stream), StatsReply)
