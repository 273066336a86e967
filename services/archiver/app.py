"""Wiring of the archiver worker: the only process that opens the database.

It stores `exchange.completed` events in batches (one transaction per read of the
stream), applies to them what telephony learns of a call later (`call.events`:
a reply talked over, a recording), and answers search, history and stats queries
from the gateway.
"""

import logging
from typing import Any, TypeVar

from faststream import AckPolicy
from faststream.asgi import AsgiFastStream
from faststream.redis import RedisBroker, StreamSub
from faststream.redis.annotations import RedisBatchStreamMessage
from pydantic import TypeAdapter, ValidationError
from redis.asyncio import Redis

from services.archiver import tracing
from services.archiver.integrity import IntegrityMonitor
from services.archiver.repository import Archive
from services.archiver.settings import ArchiverSettings
from shared import dead_letters
from shared.events import (
    AnyArchiveQuery,
    AnyCallEvent,
    ErrorReply,
    ExchangeCompleted,
    HistoryQuery,
    HistoryReply,
    Reply,
    SearchQuery,
    SearchReply,
    StatsReply,
)
from shared.replies import ReplySender
from shared.streams import (
    ARCHIVE_QUERIES,
    CALL_EVENTS,
    DEAD_LETTERS,
    EXCHANGE_COMPLETED,
    Groups,
)
from shared.worker import Worker

SERVICE = "archiver"
log = logging.getLogger(__name__)

_query_adapter: TypeAdapter[AnyArchiveQuery] = TypeAdapter(AnyArchiveQuery)
_exchange_adapter: TypeAdapter[ExchangeCompleted] = TypeAdapter(ExchangeCompleted)
_call_event_adapter: TypeAdapter[AnyCallEvent] = TypeAdapter(AnyCallEvent)

T = TypeVar("T")


class _Runtime:
    """What the handlers use, created at start-up rather than at import."""

    archive: Archive
    replies: ReplySender


async def answer(archive: Archive, query: AnyArchiveQuery) -> Reply:
    if isinstance(query, SearchQuery):
        hits = await archive.search(query.query, query.limit, query.learner)
        return SearchReply(in_reply_to=query.query_id, query=query.query, results=hits)
    if isinstance(query, HistoryQuery):
        items = await archive.history(query.session_id, query.limit, query.learner)
        return HistoryReply(in_reply_to=query.query_id, session_id=query.session_id, history=items)
    # learner None: everyone's (the gateway asks so for an admin only).
    total, sessions, last = await archive.stats(query.learner)
    return StatsReply(
        in_reply_to=query.query_id,
        total_captures=total,
        unique_sessions=sessions,
        last_capture=last,
    )


async def readable(
    redis: Redis,
    stream: str,
    bodies: list[Any],
    message: RedisBatchStreamMessage,
    adapter: TypeAdapter[T],
) -> tuple[list[T], list[dict[str, Any]]]:
    """The entries of a batch read from `stream` that `adapter` accepts, and the
    headers of each (its trace).

    The others go to dead.letters at once: one unreadable entry must not hold
    back the batch it arrived in, and no redelivery would make it readable.
    """
    accepted: list[T] = []
    carried: list[dict[str, Any]] = []
    # One header dict per entry; a batch that came without (an older producer) has
    # no trace to join.
    headers = message.batch_headers
    if len(headers) != len(bodies):
        headers = [{} for _ in bodies]
    for body, head in zip(bodies, headers, strict=True):
        try:
            accepted.append(adapter.validate_python(body))
            carried.append(head)
        except ValidationError as exc:
            log.error("unreadable %s entry moved to %s: %s", stream, DEAD_LETTERS, exc)
            await dead_letters.bury_unreadable(
                redis, body, head, stream=stream, group=Groups.ARCHIVER, reason=str(exc)
            )
    return accepted, carried


def build(settings: ArchiverSettings) -> tuple[RedisBroker, AsgiFastStream]:
    worker = Worker(settings, SERVICE)
    broker = worker.broker
    rt = _Runtime()
    # Readiness says whether the archive passed its checks when they last ran.
    integrity = IntegrityMonitor(
        lambda: rt.archive.check_integrity(), settings.archive_integrity_interval_s
    )
    worker.add_check("archive", integrity.readiness)

    @broker.subscriber(
        stream=StreamSub(
            EXCHANGE_COMPLETED,
            group=Groups.ARCHIVER,
            consumer=settings.instance_id,
            batch=True,
            max_records=settings.archive_batch_size,
        )
    )
    async def on_exchanges(bodies: list[Any], message: RedisBatchStreamMessage) -> None:
        exchanges, carried = await readable(
            worker.redis, EXCHANGE_COMPLETED, bodies, message, _exchange_adapter
        )
        if exchanges:
            with tracing.writing("archive.write", exchanges, carried):
                added = await rt.archive.save_many(exchanges)
            log.debug("archived %d of %d exchanges (rest already stored)", added, len(exchanges))

    # Its own stream, not exchange.completed: telephony learns these after the
    # exchange was published, and the archive applies them in either order.
    @broker.subscriber(
        stream=StreamSub(
            CALL_EVENTS,
            group=Groups.ARCHIVER,
            consumer=settings.instance_id,
            batch=True,
            max_records=settings.archive_batch_size,
        )
    )
    async def on_call_events(bodies: list[Any], message: RedisBatchStreamMessage) -> None:
        events, carried = await readable(
            worker.redis, CALL_EVENTS, bodies, message, _call_event_adapter
        )
        if events:
            with tracing.writing("archive.amend", events, carried):
                added = await rt.archive.save_call_events(events)
            log.debug("archived %d of %d call events (rest already stored)", added, len(events))

    # A query is acknowledged on receipt: if this replica dies while answering, the
    # gateway's deadline already tells the learner, and a late answer helps nobody.
    @broker.subscriber(
        stream=StreamSub(
            ARCHIVE_QUERIES,
            group=Groups.ARCHIVER,
            consumer=settings.instance_id,
            max_records=settings.archive_read_connections,
        ),
        max_workers=settings.archive_read_connections,
        ack_policy=AckPolicy.ACK_FIRST,
    )
    async def on_query(body: dict[str, Any]) -> None:
        try:
            query = _query_adapter.validate_python(body)
        except ValidationError as exc:
            log.error("unreadable archive query dropped: %s", exc)
            return
        if query.past_deadline():
            log.info(
                "%s query %s expired before it was answered: skipped", query.kind, query.query_id
            )
            return
        reply: Reply
        try:
            session = query.session_id if isinstance(query, HistoryQuery) else None
            with tracing.querying(query.kind, session):
                reply = await answer(rt.archive, query)
        except Exception:
            log.exception("archive query %s failed", query.kind)
            reply = ErrorReply(
                in_reply_to=query.query_id, code="internal", message="the archive failed to answer"
            )
        await rt.replies.send(reply, query.reply_to)

    async def start() -> None:
        rt.replies = ReplySender(worker.redis, settings)
        rt.archive = Archive.from_settings(settings)
        await rt.archive.open()
        integrity.start()

    async def stop() -> None:
        # First: a check in progress is interrupted rather than awaited by close().
        await integrity.stop()
        await rt.archive.close()

    return broker, worker.app(on_startup=[start], after_shutdown=[stop])
