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
"""

import logging
import sqlite3
from pathlib import Path

import aiosqlite

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
SCHEMA_VERSION = 2
# A file below this version gets its FTS index rebuilt and its counters
# recounted; one at or above it keeps them: rebuilding a large index takes
# seconds per 100,000 captures, and version 2 added only new tables.
_FTS_VERSION = 1

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
)

_TABLES = """
CREATE TABLE IF NOT EXISTS captures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    timestamp DATETIME DEFAULT CURRENT_TIMESTAMP,
    user_text TEXT NOT NULL,
    agent_text TEXT NOT NULL,
    metadata TEXT,
    event_id TEXT
);
"""

_SCHEMA = """
CREATE UNIQUE INDEX IF NOT EXISTS idx_captures_event_id ON captures(event_id);
CREATE INDEX IF NOT EXISTS idx_session_timestamp ON captures(session_id, timestamp DESC);
CREATE INDEX IF NOT EXISTS idx_captures_timestamp ON captures(timestamp);

CREATE VIRTUAL TABLE IF NOT EXISTS captures_fts USING fts5(
    session_id UNINDEXED,
    user_text,
    agent_text,
    content=captures,
    content_rowid=id,
    prefix='3'
);

CREATE TRIGGER IF NOT EXISTS captures_fts_ai AFTER INSERT ON captures BEGIN
    INSERT INTO captures_fts(rowid, session_id, user_text, agent_text)
    VALUES (new.id, new.session_id, new.user_text, new.agent_text);
END;

CREATE TRIGGER IF NOT EXISTS captures_fts_ad AFTER DELETE ON captures BEGIN
    INSERT INTO captures_fts(captures_fts, rowid, session_id, user_text, agent_text)
    VALUES ('delete', old.id, old.session_id, old.user_text, old.agent_text);
END;

-- Only when indexed content (or the rowid) changes: a metadata-only UPDATE
-- leaves the index alone.
CREATE TRIGGER IF NOT EXISTS captures_fts_au
AFTER UPDATE OF id, session_id, user_text, agent_text ON captures BEGIN
    INSERT INTO captures_fts(captures_fts, rowid, session_id, user_text, agent_text)
    VALUES ('delete', old.id, old.session_id, old.user_text, old.agent_text);
    INSERT INTO captures_fts(rowid, session_id, user_text, agent_text)
    VALUES (new.id, new.session_id, new.user_text, new.agent_text);
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
    triggers may have corrupted it, and its table lacks the prefix index), and
    the counters are computed by one full scan. Later opens skip all of that.
    """
    await conn.execute("BEGIN IMMEDIATE")
    try:
        await _execute_script(conn, _TABLES)
        if "event_id" not in await _columns(conn, "captures"):
            # A v1 file: its rows have no event id (NULL, which the unique
            # index allows any number of times).
            await conn.execute("ALTER TABLE captures ADD COLUMN event_id TEXT")
        async with conn.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        version = int(row[0]) if row else 0
        upgrade = version < SCHEMA_VERSION
        rebuild = version < _FTS_VERSION
        for trigger in (*_V1_TRIGGERS, *(_TRIGGERS if upgrade else ())):
            await conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        if rebuild:
            await conn.execute("DROP TABLE IF EXISTS captures_fts")
        await _execute_script(conn, _SCHEMA)
        if rebuild:
            # Seconds per 100,000 captures: worth a line when a v1 file is big.
            log.info("building the archive's full-text index and counters")
            await conn.execute("INSERT INTO captures_fts(captures_fts) VALUES ('rebuild')")
            await conn.execute(
                "INSERT OR REPLACE INTO capture_stats (id, total_captures, unique_sessions) "
                "SELECT 1, count(*), count(DISTINCT session_id) FROM captures"
            )
        if upgrade:
            await conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        await conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            await conn.execute("ROLLBACK")
        raise
