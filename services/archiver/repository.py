"""The archive: captured exchanges in SQLite, searchable with FTS5.

One writer connection and a small pool of read connections, each an aiosqlite
connection with its own thread, so SQLite work never runs on the event loop.
WAL lets the readers answer search/history/stats while a batch is written.

What telephony learns of a call later (a reply talked over, a recording) is
stored apart and applied to the captures it concerns, whichever of the two
arrives first (see db).
"""

import asyncio
import json
import logging
import re
import sqlite3
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Self

import aiosqlite

from services.archiver import db, integrity, search
from services.archiver.fts_query import split_terms
from services.archiver.integrity import IntegrityReport
from services.archiver.settings import ArchiverSettings
from shared.events import (
    DEFAULT_LEARNER,
    CallRecorded,
    ExchangeCompleted,
    HistoryItem,
    ReplyInterrupted,
    SearchHit,
)

log = logging.getLogger(__name__)

# C0 controls except \t and \n. Stored text never contains them, which is what
# lets \x02/\x03 serve as unambiguous snippet markers (see search.MARK_OPEN).
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f]")
# Lone surrogates (possible in JSON "\ud800") cannot be encoded as UTF-8.
_SURROGATES = re.compile(r"[\ud800-\udfff]")
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\ud800-\udfff]")

# The targeted form of INSERT OR IGNORE: only a duplicate event_id is skipped;
# any other constraint failure (a NULL text, say) still raises.
_INSERT = """
INSERT INTO captures (event_id, session_id, timestamp, user_text, agent_text, metadata, learner)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (event_id) DO NOTHING
"""

# The batch's ids and sessions travel as one JSON array: no limit on the
# number of SQL variables, and one statement whatever the batch size.
_HEARD_FOR = """
SELECT event_id, heard_text, heard_ms FROM heard
WHERE event_id IN (SELECT value FROM json_each(?))
"""

# rowid: in the order they were stored, as _ADD_RECORDING appends them.
_RECORDINGS_FOR = """
SELECT session_id, recording_sid, url, duration_s FROM recordings
WHERE session_id IN (SELECT value FROM json_each(?))
ORDER BY rowid
"""

# Only a new or different interruption changes the row (rowcount 1).
_UPSERT_HEARD = """
INSERT INTO heard (event_id, heard_text, heard_ms, received)
VALUES (:event_id, :heard_text, :heard_ms, :received)
ON CONFLICT (event_id) DO UPDATE SET
    heard_text = excluded.heard_text, heard_ms = excluded.heard_ms, received = excluded.received
WHERE heard_text IS NOT excluded.heard_text OR heard_ms IS NOT excluded.heard_ms
"""

_INSERT_RECORDING = """
INSERT INTO recordings (recording_sid, session_id, url, duration_s, received)
VALUES (:sid, :session_id, :url, :duration_s, :received)
ON CONFLICT (recording_sid) DO NOTHING
"""

# A capture's metadata as a JSON object. Every row this archive writes has one;
# v1 rows may have NULL, taken as {}. Anything else (a hand edit) is replaced:
# json_set would reject it, and fail the whole batch of call events with it.
_METADATA = """(CASE
    WHEN NOT json_valid(coalesce(metadata, '')) THEN '{}'
    WHEN json_type(metadata) = 'object' THEN metadata
    ELSE '{}' END)"""

# SET expressions see the row as it was: `agent_text` in the metadata is the
# text before the cut. One cut already there keeps its written_text, or a
# second interruption would record the cut text as the written one.
_CUT_REPLY = f"""
UPDATE captures SET
    agent_text = :heard_text,
    metadata = json_set({_METADATA}, '$.interrupted', json_object(
        'heard_ms', :heard_ms,
        'written_text',
        coalesce(json_extract({_METADATA}, '$.interrupted.written_text'), agent_text)
    ))
WHERE event_id = :event_id
"""

_ADD_RECORDING = f"""
UPDATE captures SET
    metadata = json_set({_METADATA}, '$.recordings', json_insert(
        coalesce(json_extract({_METADATA}, '$.recordings'), json_array()),
        '$[#]',
        json_object('sid', :sid, 'url', :url, 'duration_s', :duration_s)
    ))
WHERE session_id = :session_id AND NOT EXISTS (
    SELECT 1 FROM json_each({_METADATA}, '$.recordings')
    WHERE json_extract(value, '$.sid') = :sid
)
"""

# A session is one learner's, but another may have used its id: their rows are
# skipped, not shown. :learner NULL: anyone's.
_HISTORY = """
SELECT id, timestamp, user_text, agent_text, metadata
FROM captures
WHERE session_id = :session_id AND (:learner IS NULL OR learner = :learner)
ORDER BY timestamp DESC, id DESC
LIMIT :limit
"""

_STATS = """
SELECT s.total_captures, s.unique_sessions, (SELECT max(timestamp) FROM captures)
FROM capture_stats AS s WHERE s.id = 1
"""

# max(timestamp): one probe of idx_captures_learner_timestamp.
_LEARNER_STATS = """
SELECT s.total_captures, s.unique_sessions,
       (SELECT max(timestamp) FROM captures WHERE learner = s.learner)
FROM learner_stats AS s WHERE s.learner = ?
"""


CallEvent = ReplyInterrupted | CallRecorded


class _Row(NamedTuple):
    """One capture as _INSERT takes it."""

    event_id: str
    session_id: str
    timestamp: str
    user_text: str
    agent_text: str
    metadata: str
    learner: str


class _Heard(NamedTuple):
    text: str
    ms: int | None


def clean_text(text: str) -> str:
    """`text` without C0 control characters (except \\t, \\n) or lone surrogates."""
    if _UNSAFE.search(text) is None:
        # The usual case, and a quarter of the cost of substituting.
        return text
    text = _CONTROL_CHARS.sub("", text)
    return _SURROGATES.sub("\ufffd", text)


def format_timestamp(moment: datetime) -> str:
    """UTC, to the second, as v1 shows it: 2025-11-21T10:30:00."""
    if moment.tzinfo is None:
        # Events are produced with aware UTC datetimes; a naive one can only
        # come from a producer that meant UTC.
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds")


def _metadata(exchange: ExchangeCompleted) -> str:
    metadata: dict[str, object] = {
        "source": exchange.source,
        "intent": exchange.intent,
        "input": exchange.input,
        "responder": exchange.responder,
    }
    if exchange.expired:
        # The learner's words, unanswered: they had stopped waiting.
        metadata["expired"] = True
    if exchange.cancelled:
        # The learner cut the reply short: `agent_text` is what they received.
        metadata["cancelled"] = True
    if exchange.caller is not None:
        # A keyed hash of a caller's number, never the number (see UtteranceReceived).
        metadata["caller"] = exchange.caller
    return json.dumps(metadata)


def _row(exchange: ExchangeCompleted) -> _Row:
    return _Row(
        exchange.event_id,
        exchange.session_id,
        format_timestamp(exchange.occurred_at),
        clean_text(exchange.user_text),
        clean_text(exchange.agent_text),
        _metadata(exchange),
        exchange.learner,
    )


def _amended(row: _Row, heard: _Heard | None, recordings: list[dict[str, object]]) -> _Row:
    """`row` as _CUT_REPLY and _ADD_RECORDING would have left it, had it been stored
    before the call events that concern it."""
    if heard is None and not recordings:
        return row
    metadata = json.loads(row.metadata)
    agent_text = row.agent_text
    if heard is not None:
        metadata["interrupted"] = {"heard_ms": heard.ms, "written_text": row.agent_text}
        agent_text = heard.text
    if recordings:
        metadata["recordings"] = recordings
    return row._replace(agent_text=agent_text, metadata=json.dumps(metadata))


async def _with_call_events(writer: aiosqlite.Connection, rows: list[_Row]) -> list[_Row]:
    """`rows` amended with the call events stored before them."""
    event_ids = json.dumps([row.event_id for row in rows])
    heard = {
        event_id: _Heard(text, ms)
        for event_id, text, ms in await writer.execute_fetchall(_HEARD_FOR, (event_ids,))
    }
    sessions = json.dumps(sorted({row.session_id for row in rows}))
    recordings: defaultdict[str, list[dict[str, object]]] = defaultdict(list)
    for session_id, sid, url, duration_s in await writer.execute_fetchall(
        _RECORDINGS_FOR, (sessions,)
    ):
        recordings[session_id].append({"sid": sid, "url": url, "duration_s": duration_s})
    if not heard and not recordings:
        # The usual batch: nothing was told of its exchanges before they came.
        return rows
    return [
        _amended(row, heard.get(row.event_id), recordings.get(row.session_id, [])) for row in rows
    ]


async def _save_interruption(writer: aiosqlite.Connection, event: ReplyInterrupted) -> int:
    params = {
        "event_id": event.in_reply_to,
        "heard_text": clean_text(event.heard_text),
        "heard_ms": event.heard_ms,
        "received": format_timestamp(event.occurred_at),
    }
    async with writer.execute(_UPSERT_HEARD, params) as cursor:
        if cursor.rowcount == 0:
            # Stored before, and applied in the same transaction (or by
            # save_many, to an exchange that came later).
            return 0
    await writer.execute(_CUT_REPLY, params)
    return 1


async def _save_recording(writer: aiosqlite.Connection, event: CallRecorded) -> int:
    params = {
        "sid": clean_text(event.recording_sid),
        "session_id": event.session_id,
        "url": clean_text(event.recording_url),
        "duration_s": event.duration_s,
        "received": format_timestamp(event.occurred_at),
    }
    async with writer.execute(_INSERT_RECORDING, params) as cursor:
        if cursor.rowcount == 0:
            return 0
    await writer.execute(_ADD_RECORDING, params)
    return 1


async def _fetch_all(conn: aiosqlite.Connection, sql: str) -> list[sqlite3.Row]:
    """`sql`'s rows; interrupted if the caller is cancelled."""
    try:
        return list(await conn.execute_fetchall(sql))
    except asyncio.CancelledError:
        # The statement would run on to its end in the connection's thread (a
        # whole-database check: seconds per GB), and hold up close() as long.
        await conn.interrupt()
        raise


def _is_fts_query_error(error: sqlite3.OperationalError) -> bool:
    message = str(error)
    return message.startswith("fts5:") or "malformed MATCH" in message


class Archive:
    """Captured exchanges: written in batches, searched, listed and counted.

    Use as `async with Archive(path) as archive: ...`, or call `open()` and
    `close()` yourself.
    """

    def __init__(
        self,
        path: Path,
        *,
        read_connections: int = 4,
        busy_timeout_ms: int = 5000,
        search_candidate_limit: int = 2000,
    ) -> None:
        if read_connections < 1:
            raise ValueError("read_connections must be at least 1")
        if search_candidate_limit < 1:
            raise ValueError("search_candidate_limit must be at least 1")
        self.path = path
        self._read_connections = read_connections
        self._busy_timeout_ms = busy_timeout_ms
        self._candidate_limit = search_candidate_limit
        self._writer: aiosqlite.Connection | None = None
        self._readers: list[aiosqlite.Connection] = []
        # LIFO: the connection used last has the warmest page cache.
        self._idle_readers: asyncio.LifoQueue[aiosqlite.Connection] = asyncio.LifoQueue()
        # One transaction at a time on the single writer connection.
        self._write_lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: ArchiverSettings) -> Self:
        return cls(
            settings.database_path,
            read_connections=settings.archive_read_connections,
            busy_timeout_ms=settings.sqlite_busy_timeout_ms,
            search_candidate_limit=settings.search_candidate_limit,
        )

    async def open(self) -> None:
        """Open the connections; create or migrate the schema first."""
        if self._writer is not None:
            raise RuntimeError("archive already open")
        try:
            self._writer = await db.connect(self.path, busy_timeout_ms=self._busy_timeout_ms)
            await db.ensure_schema(self._writer)
            for _ in range(self._read_connections):
                reader = await db.connect(
                    self.path, busy_timeout_ms=self._busy_timeout_ms, read_only=True
                )
                self._readers.append(reader)
                self._idle_readers.put_nowait(reader)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close every connection. Safe to call twice, or after a failed open().

        A batch being written is committed first; searches still running on a
        reader fail.
        """
        async with self._write_lock:
            writer, self._writer = self._writer, None
        connections = [*self._readers, *([writer] if writer else [])]
        self._readers = []
        self._idle_readers = asyncio.LifoQueue()
        for conn in connections:
            try:
                await conn.close()
            except Exception:
                log.exception("closing a database connection failed")

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @asynccontextmanager
    async def _reader(self) -> AsyncIterator[aiosqlite.Connection]:
        if not self._readers:
            raise RuntimeError("archive is not open")
        conn = await self._idle_readers.get()
        try:
            yield conn
        finally:
            # Not if the archive was closed (and maybe reopened) meanwhile.
            if conn in self._readers:
                self._idle_readers.put_nowait(conn)

    def _writer_conn(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise RuntimeError("archive is not open")
        return self._writer

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """The writer in a transaction, committed at the end or rolled back on error."""
        async with self._write_lock:
            writer = self._writer_conn()
            await writer.execute("BEGIN IMMEDIATE")
            try:
                yield writer
                await writer.execute("COMMIT")
            except BaseException:
                # Some errors (disk full, ...) have rolled back already.
                if writer.in_transaction:
                    await writer.execute("ROLLBACK")
                raise

    async def save_many(self, exchanges: Sequence[ExchangeCompleted]) -> int:
        """Store `exchanges` in one transaction; return how many were new.

        An exchange whose event_id is already stored (a redelivery) is skipped,
        so saving the same batch twice stores it once. Call events stored before
        it (see save_call_events) are applied to it as it is written.
        """
        if not exchanges:
            return 0
        rows = [_row(exchange) for exchange in exchanges]
        # Only a phone call has call events: the other exchanges of a batch (most,
        # usually all) cost no look-up.
        calls = [i for i, exchange in enumerate(exchanges) if exchange.source == "twilio"]
        async with self._transaction() as writer:
            if calls:
                amended = await _with_call_events(writer, [rows[i] for i in calls])
                for i, row in zip(calls, amended, strict=True):
                    rows[i] = row
            cursor = await writer.executemany(_INSERT, rows)
            # rowcount sums the rows each INSERT changed (skipped ones: 0);
            # rows written by triggers are not counted.
            inserted = cursor.rowcount
            await cursor.close()
        return inserted

    async def save_call_events(self, events: Sequence[CallEvent]) -> int:
        """Store `events` in one transaction; return how many were new.

        Each is applied to the captures it concerns that are stored already;
        save_many applies it to those that come later. An interruption makes
        what the caller heard the capture's `agent_text` (the text as written
        goes to metadata `interrupted`), a recording is listed in the metadata
        `recordings` of every capture of its call. An event stored before (a
        redelivery) changes nothing.
        """
        if not events:
            return 0
        added = 0
        async with self._transaction() as writer:
            for event in events:
                if isinstance(event, ReplyInterrupted):
                    added += await _save_interruption(writer, event)
                else:
                    added += await _save_recording(writer, event)
        return added

    async def search(
        self, query: str, limit: int, learner: str | None = DEFAULT_LEARNER
    ) -> list[SearchHit]:
        """Matches of `query` among the captures of `learner` (None: everyone's),
        best first by BM25, at most `limit` of them.

        Relevance is ranked within the newest `search_candidate_limit` matches
        (by rowid, i.e. arrival order), not within all of them: ranking every
        match of a word found in hundreds of thousands of rows costs seconds.
        The price is that an excellent but old match of a very common term may
        not make the list; for a query with fewer matches than the limit (any
        specific query) the ranking is exact. Details in services.archiver.search.

        Any string is accepted (see fts_query); one with nothing searchable in
        it returns [] without touching the database.
        """
        terms = split_terms(query)
        if not terms or limit < 1:
            return []
        async with self._reader() as conn:
            try:
                return await search.search(conn, terms, limit, self._candidate_limit, learner)
            except sqlite3.OperationalError as error:
                if not _is_fts_query_error(error):
                    raise
                # fts_query is meant to make this impossible; should it happen,
                # the learner gets no results rather than an error.
                log.error("FTS5 rejected the terms %r of %r: %s", terms, query, error)
                return []

    async def history(
        self, session_id: str, limit: int, learner: str | None = DEFAULT_LEARNER
    ) -> list[HistoryItem]:
        """The session's exchanges of `learner` (None: anyone's), newest first, at
        most `limit` of them."""
        if limit < 1:
            return []
        params = {"session_id": session_id, "learner": learner, "limit": limit}
        async with self._reader() as conn:
            rows = await conn.execute_fetchall(_HISTORY, params)
        return [
            HistoryItem(
                id=row[0], timestamp=row[1], user_text=row[2], agent_text=row[3], metadata=row[4]
            )
            for row in rows
        ]

    async def stats(self, learner: str | None = DEFAULT_LEARNER) -> tuple[int, int, str | None]:
        """(total_captures, unique_sessions, last_capture) of `learner`, or of
        everyone (None: an admin's); O(1), see db."""
        async with self._reader() as conn:
            if learner is None:
                rows = list(await conn.execute_fetchall(_STATS))
            else:
                rows = list(await conn.execute_fetchall(_LEARNER_STATS, (learner,)))
        if not rows:
            return 0, 0, None
        total, sessions, last = rows[0]
        return int(total), int(sessions), last

    async def integrity_check(self) -> None:
        """Raise sqlite3.DatabaseError if the FTS index disagrees with `captures`.

        FTS5's 'integrity-check' command with rank 1: plain 'integrity-check'
        only checks the index against itself, and on an external-content table
        it passes even when the index holds words the content no longer has
        (the damage v1's triggers did). With rank 1 it re-tokenizes every row
        of `captures` and compares, so it reads the whole table: a maintenance
        tool, not something to run per request.
        """
        async with self._write_lock:
            await _fetch_all(self._writer_conn(), integrity.FTS_CHECK)

    async def check_integrity(self) -> IntegrityReport:
        """`PRAGMA integrity_check` and the FTS5 check (see integrity_check),
        as a report rather than an exception.

        The first runs on a connection of its own, so the readers keep answering
        and writes go on (WAL). The second is an INSERT to SQLite and takes the
        write lock: it goes through the writer, and batches wait while it runs.
        """
        if self._writer is None:
            raise RuntimeError("archive is not open")
        started = time.monotonic()
        try:
            conn = await db.connect(
                self.path, busy_timeout_ms=self._busy_timeout_ms, read_only=True
            )
            try:
                rows = await _fetch_all(conn, integrity.INTEGRITY_CHECK)
            finally:
                await conn.close()
            found = integrity.integrity_result([str(row[0]) for row in rows])
        except sqlite3.DatabaseError as error:
            found = str(error)
        try:
            await self.integrity_check()
            fts = integrity.OK
        except sqlite3.DatabaseError as error:
            fts = str(error)
        return integrity.report(found, fts, started)
