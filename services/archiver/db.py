"""SQLite connections and the archive schema.

v1's tables, columns, index and names are kept, so a v1 database file opens
as is and is migrated in place (see `ensure_schema`). Additions:

- `captures.event_id` with a unique index: a redelivered event is stored once;
- `idx_captures_timestamp`: `max(timestamp)` (the last capture) is an index
  lookup instead of a scan of every row;
- `capture_stats`: row and session counters kept by triggers (see below);
- `prefix='3'` on captures_fts: each FTS5 cursor on `lea*` reads one doclist
  instead of merging those of every word starting with "lea" (about 5 ms per
  cursor at 100,000 captures, growing with the archive, and a search opens
  several). It costs about a fifth of the ingest speed;
- the FTS triggers use FTS5's 'delete' command. v1 ran a plain UPDATE/DELETE on
  the external-content FTS table: FTS5 then reads the old tokens back from
  `captures`, which in an AFTER trigger is already changed (or gone), so the
  old tokens stay in the index. The updated row is still found by its old
  words and the deleted one by all of its words (the integration tests show
  it).

Schema version 2 adds what telephony learns of a call after its exchanges were
written (stream `call.events`), kept in tables of their own because it may
arrive before the exchange it concerns:

- `heard`: what the caller heard of a reply they talked over, by the exchange's
  event_id. It becomes the capture's `agent_text`; the text as written moves to
  its metadata (`interrupted.written_text`);
- `recordings`: Twilio's recordings of a call, by session; each capture of the
  call lists them in its metadata (`recordings`).

Schema version 3 says whose each capture is (`captures.learner`, see
shared.events.LearnerId); every search, history and stats query is answered for
one learner. Rows written before it belong to DEFAULT_LEARNER ('local', the one
learner of AUTH_MODE=open): the column's default, so adding it rewrites no row.

- `captures_fts.learner_key`: the owner, as one token that a MATCH filters on
  (`learner_key : "6c6f63616c" AND (...)`, see fts_query.owned_by). The filter
  is part of the FTS query, so FTS5 skips other learners' entries of a word
  through its doclist index instead of visiting each of them: another learner's
  common words do not lengthen a search. The token is the id in hex because
  unicode61 would fold case and split on `_.:-`, making "Ann.1" and "ann-1" one
  learner. The index reads it from the view `captures_fts_content` (the
  external content), which computes it from `captures.learner`; the column must
  be read back exactly as it was indexed, or FTS5's content check would fail;
- `learner_stats`: the row and session counters of each learner, kept by
  triggers like `capture_stats` (which still counts everyone's, for an admin);
- `idx_captures_learner_timestamp`: a learner's last capture is an index lookup.

A v2 file gets the column, its FTS index rebuilt with the owner and the
counters counted (`_FTS_VERSION`).
"""

import logging
import sqlite3
from pathlib import Path

import aiosqlite

from shared.events import DEFAULT_LEARNER

log = logging.getLogger(__name__)

# Readers map the file instead of copying pages into each connection's own
# cache: the OS page cache is shared by all of them, and a page missing from
# SQLite's cache costs no read() call. Measured at 1,000,000 captures, this
# takes the p95 of phrase searches from about 27 ms to 22 ms.
_READER_MMAP_BYTES = 1 << 30
_READER_CACHE_KIB = -65536
# Page cache of the writer (negative: KiB; SQLite's default is 2 MiB): the
# pages that inserts touch all over the event_id and session indexes stay in
# memory. Allocated as used, so a small archive uses little.
_WRITER_CACHE_KIB = -262144
# Checkpoint when the WAL reaches ~40 MB instead of ~4 MB: a page changed by
# many batches is copied into the database once, and the checkpoint's fsync
# is paid ten times less often. With the larger cache, measured at 300,000
# captures: 7,500 -> 8,900 captures/s.
_WAL_CHECKPOINT_PAGES = 10_000

# PRAGMA user_version once the current schema is in place.
SCHEMA_VERSION = 3
# A file below this version gets its FTS index rebuilt and its counters
# recounted; one at or above it keeps them: rebuilding a large index takes
# seconds per 100,000 captures. Version 2 added only new tables; version 3 a
# column to the index, and per-learner counters.
_FTS_VERSION = 3

# v1's FTS triggers; they must go, or rows would be indexed twice (insert) and
# the index corrupted (update/delete).
_V1_TRIGGERS = ("captures_ai", "captures_ad", "captures_au")
# Ours, recreated from their current definitions whenever SCHEMA_VERSION grows.
_TRIGGERS = (
    "captures_fts_ai",
    "captures_fts_ad",
    "captures_fts_au",
    "capture_stats_ai",
    "capture_stats_ad",
    "capture_stats_au",
    "learner_stats_ai",
    "learner_stats_ad",
    "learner_stats_au",
)

_TABLES = f"""
CREATE TABLE IF NOT EXISTS captures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    timestamp DATETIME DEFAULT CURRENT_TIMESTAMP,
    user_text TEXT NOT NULL,
    agent_text TEXT NOT NULL,
    metadata TEXT,
    event_id TEXT,
    learner TEXT NOT NULL DEFAULT '{DEFAULT_LEARNER}'
);
"""

_SCHEMA = """
CREATE UNIQUE INDEX IF NOT EXISTS idx_captures_event_id ON captures(event_id);
CREATE INDEX IF NOT EXISTS idx_session_timestamp ON captures(session_id, timestamp DESC);
CREATE INDEX IF NOT EXISTS idx_captures_timestamp ON captures(timestamp);
CREATE INDEX IF NOT EXISTS idx_captures_learner_timestamp ON captures(learner, timestamp);

-- What the FTS index holds of each capture, and reads back to check itself or
-- to make snippets: the owner as one hex token (see the module docstring).
-- SQLite's hex() is that of the UTF-8 bytes, like fts_query.learner_token.
CREATE VIEW IF NOT EXISTS captures_fts_content AS
SELECT id, session_id, user_text, agent_text, hex(learner) AS learner_key FROM captures;

-- learner_key last: snippet() and bm25() weights name columns by position.
CREATE VIRTUAL TABLE IF NOT EXISTS captures_fts USING fts5(
    session_id UNINDEXED,
    user_text,
    agent_text,
    learner_key,
    content=captures_fts_content,
    content_rowid=id,
    prefix='3'
);

CREATE TRIGGER IF NOT EXISTS captures_fts_ai AFTER INSERT ON captures BEGIN
    INSERT INTO captures_fts(rowid, session_id, user_text, agent_text, learner_key)
    VALUES (new.id, new.session_id, new.user_text, new.agent_text, hex(new.learner));
END;

CREATE TRIGGER IF NOT EXISTS captures_fts_ad AFTER DELETE ON captures BEGIN
    INSERT INTO captures_fts(captures_fts, rowid, session_id, user_text, agent_text, learner_key)
    VALUES ('delete', old.id, old.session_id, old.user_text, old.agent_text, hex(old.learner));
END;

-- Only when indexed content (or the rowid) changes: a metadata-only UPDATE
-- leaves the index alone.
CREATE TRIGGER IF NOT EXISTS captures_fts_au
AFTER UPDATE OF id, session_id, user_text, agent_text, learner ON captures BEGIN
    INSERT INTO captures_fts(captures_fts, rowid, session_id, user_text, agent_text, learner_key)
    VALUES ('delete', old.id, old.session_id, old.user_text, old.agent_text, hex(old.learner));
    INSERT INTO captures_fts(rowid, session_id, user_text, agent_text, learner_key)
    VALUES (new.id, new.session_id, new.user_text, new.agent_text, hex(new.learner));
END;

-- Why counters: COUNT(*) and COUNT(DISTINCT session_id) read the whole table
-- or index (tens to hundreds of ms at 1,000,000 rows) on every /api/stats.
-- Keeping them here costs each insert one single-row UPDATE plus one probe of
-- idx_session_timestamp ("is this session new?"), a few microseconds.
CREATE TABLE IF NOT EXISTS capture_stats (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    total_captures INTEGER NOT NULL,
    unique_sessions INTEGER NOT NULL
);

CREATE TRIGGER IF NOT EXISTS capture_stats_ai AFTER INSERT ON captures BEGIN
    UPDATE capture_stats SET
        total_captures = total_captures + 1,
        unique_sessions = unique_sessions + (NOT EXISTS (
            SELECT 1 FROM captures WHERE session_id = new.session_id AND id <> new.id))
    WHERE id = 1;
END;

CREATE TRIGGER IF NOT EXISTS capture_stats_ad AFTER DELETE ON captures BEGIN
    UPDATE capture_stats SET
        total_captures = total_captures - 1,
        unique_sessions = unique_sessions - (NOT EXISTS (
            SELECT 1 FROM captures WHERE session_id = old.session_id))
    WHERE id = 1;
END;

CREATE TRIGGER IF NOT EXISTS capture_stats_au AFTER UPDATE OF session_id ON captures
WHEN old.session_id IS NOT new.session_id BEGIN
    UPDATE capture_stats SET
        -- NOT binds looser than + and -: the parentheses are needed.
        unique_sessions = unique_sessions
            + (NOT EXISTS (
                SELECT 1 FROM captures WHERE session_id = new.session_id AND id <> new.id))
            - (NOT EXISTS (SELECT 1 FROM captures WHERE session_id = old.session_id))
    WHERE id = 1;
END;

-- The same counters for each learner: a learner's /api/stats is as cheap as an
-- admin's. "Is this session new?" probes idx_session_timestamp and stops at the
-- session's first row of that learner: a session has one learner (the
-- responder sees to it), so that is its first row.
CREATE TABLE IF NOT EXISTS learner_stats (
    learner TEXT PRIMARY KEY,
    total_captures INTEGER NOT NULL,
    unique_sessions INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TRIGGER IF NOT EXISTS learner_stats_ai AFTER INSERT ON captures BEGIN
    INSERT INTO learner_stats (learner, total_captures, unique_sessions)
    VALUES (new.learner, 1, 1)
    ON CONFLICT (learner) DO UPDATE SET
        total_captures = total_captures + 1,
        unique_sessions = unique_sessions + (NOT EXISTS (
            SELECT 1 FROM captures
            WHERE session_id = new.session_id AND learner = new.learner AND id <> new.id));
END;

CREATE TRIGGER IF NOT EXISTS learner_stats_ad AFTER DELETE ON captures BEGIN
    UPDATE learner_stats SET
        total_captures = total_captures - 1,
        unique_sessions = unique_sessions - (NOT EXISTS (
            SELECT 1 FROM captures WHERE session_id = old.session_id AND learner = old.learner))
    WHERE learner = old.learner;
END;

-- A capture moved to another learner or session: out of the old one's counts,
-- into the new one's (the row already has its new values here).
CREATE TRIGGER IF NOT EXISTS learner_stats_au AFTER UPDATE OF learner, session_id ON captures
WHEN old.learner IS NOT new.learner OR old.session_id IS NOT new.session_id BEGIN
    UPDATE learner_stats SET
        total_captures = total_captures - 1,
        unique_sessions = unique_sessions - (NOT EXISTS (
            SELECT 1 FROM captures WHERE session_id = old.session_id AND learner = old.learner))
    WHERE learner = old.learner;
    INSERT INTO learner_stats (learner, total_captures, unique_sessions)
    VALUES (new.learner, 1, 1)
    ON CONFLICT (learner) DO UPDATE SET
        total_captures = total_captures + 1,
        unique_sessions = unique_sessions + (NOT EXISTS (
            SELECT 1 FROM captures
            WHERE session_id = new.session_id AND learner = new.learner AND id <> new.id));
END;

-- Rows stay once applied: a redelivered event is then known as stored, and
-- an exchange written later (or again) still gets them.
-- `received`: the event's occurred_at (when telephony learned it), UTC like
-- captures.timestamp.
CREATE TABLE IF NOT EXISTS heard (
    event_id TEXT PRIMARY KEY,
    heard_text TEXT NOT NULL,
    heard_ms INTEGER,
    received DATETIME
);

CREATE TABLE IF NOT EXISTS recordings (
    recording_sid TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    url TEXT NOT NULL,
    duration_s INTEGER,
    received DATETIME
);

CREATE INDEX IF NOT EXISTS idx_recordings_session_id ON recordings(session_id);
"""


async def connect(
    path: Path, *, busy_timeout_ms: int, read_only: bool = False
) -> aiosqlite.Connection:
    """Open `path` with the archive's pragmas; the parent folder is created.

    Transactions are explicit (isolation_level=None): the writer issues
    BEGIN IMMEDIATE itself so that it takes the write lock up front rather than
    failing to upgrade a read lock halfway through a batch.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        # In WAL mode NORMAL syncs only at checkpoints. A power cut (not a
        # process crash) may lose the last commits, whose events Redis already
        # considers done: an accepted, rare loss for an archive, in exchange
        # for no fsync per batch.
        await conn.execute("PRAGMA synchronous = NORMAL")
        await conn.execute("PRAGMA foreign_keys = ON")
        await conn.execute("PRAGMA temp_store = MEMORY")
        if read_only:
            # A reader must never write, even through a bug.
            await conn.execute("PRAGMA query_only = ON")
            await conn.execute(f"PRAGMA mmap_size = {_READER_MMAP_BYTES}")
            await conn.execute(f"PRAGMA cache_size = {_READER_CACHE_KIB}")
        else:
            # WAL is a property of the file: set once by the writer, it lets
            # readers run while a write transaction is open.
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute(f"PRAGMA cache_size = {_WRITER_CACHE_KIB}")
            await conn.execute(f"PRAGMA wal_autocheckpoint = {_WAL_CHECKPOINT_PAGES}")
    except BaseException:
        await conn.close()
        raise
    return conn


async def _columns(conn: aiosqlite.Connection, table: str) -> set[str]:
    async with conn.execute(f"PRAGMA table_info({table})") as cursor:
        return {str(row[1]) async for row in cursor}


async def _execute_script(conn: aiosqlite.Connection, script: str) -> None:
    # executescript() would COMMIT the open transaction first; run the
    # statements one by one inside it instead.
    statement = ""
    for line in script.splitlines(keepends=True):
        if not statement and (not line.strip() or line.lstrip().startswith("--")):
            continue
        statement += line
        if sqlite3.complete_statement(statement):
            await conn.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement: {statement!r}")


async def ensure_schema(conn: aiosqlite.Connection) -> None:
    """Create the schema, or bring a v1 (or older v2) database up to date.

    Idempotent and done in one transaction. Tables and indexes missing from the
    file are created. Below SCHEMA_VERSION the triggers are made afresh from
    their current definitions (cheap); below _FTS_VERSION (new, or written by
    v1) so is the FTS table, whose index is rebuilt from `captures` (v1's
    triggers may have corrupted it, its table lacks the prefix index, and
    before v3 the owner), and the counters are computed by one full scan.
    Later opens skip all of that.
    """
    await conn.execute("BEGIN IMMEDIATE")
    try:
        await _execute_script(conn, _TABLES)
        columns = await _columns(conn, "captures")
        if "event_id" not in columns:
            # A v1 file: its rows have no event id (NULL, which the unique
            # index allows any number of times).
            await conn.execute("ALTER TABLE captures ADD COLUMN event_id TEXT")
        if "learner" not in columns:
            # Before v3: every row is the default learner's. A column with a
            # constant default is added without rewriting a row.
            await conn.execute(
                f"ALTER TABLE captures ADD COLUMN learner TEXT NOT NULL DEFAULT '{DEFAULT_LEARNER}'"
            )
        async with conn.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        version = int(row[0]) if row else 0
        upgrade = version < SCHEMA_VERSION
        rebuild = version < _FTS_VERSION
        for trigger in (*_V1_TRIGGERS, *(_TRIGGERS if upgrade else ())):
            await conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        if rebuild:
            # Its content view too: the table reads it, and it may have changed.
            await conn.execute("DROP TABLE IF EXISTS captures_fts")
            await conn.execute("DROP VIEW IF EXISTS captures_fts_content")
        await _execute_script(conn, _SCHEMA)
        if rebuild:
            # Seconds per 100,000 captures: worth a line when an older file is big.
            log.info("building the archive's full-text index and counters")
            await conn.execute("INSERT INTO captures_fts(captures_fts) VALUES ('rebuild')")
            await conn.execute(
                "INSERT OR REPLACE INTO capture_stats (id, total_captures, unique_sessions) "
                "SELECT 1, count(*), count(DISTINCT session_id) FROM captures"
            )
            await conn.execute("DELETE FROM learner_stats")
            await conn.execute(
                "INSERT INTO learner_stats (learner, total_captures, unique_sessions) "
                "SELECT learner, count(*), count(DISTINCT session_id) FROM captures "
                "GROUP BY learner"
            )
        if upgrade:
            await conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        await conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            await conn.execute("ROLLBACK")
        raise
