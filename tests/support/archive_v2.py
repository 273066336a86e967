"""An archive as version 2 of the archiver (schema version 2, before learners)
made it: its DDL exactly as services/archiver/db.py had it, frozen here so that the
migration to later versions is tested on the file an upgrade really meets."""

import sqlite3
from pathlib import Path

SCHEMA_VERSION = 2

TABLES = """
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

SCHEMA = """
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


def make_archive(path: Path) -> sqlite3.Connection:
    """A new, empty archive as version 2's ensure_schema creates it, and an
    ordinary connection to it to write rows through its triggers."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(TABLES + SCHEMA)
    # What v2 did for a new file (below its FTS version): counters counted.
    conn.execute(
        "INSERT OR REPLACE INTO capture_stats (id, total_captures, unique_sessions) "
        "SELECT 1, count(*), count(DISTINCT session_id) FROM captures"
    )
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return conn
