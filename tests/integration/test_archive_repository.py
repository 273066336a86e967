"""Archive against real SQLite files (pytest's tmp_path): no mocks."""

import asyncio
import json
import re
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from services.archiver import db, search
from services.archiver.repository import Archive
from services.archiver.settings import ArchiverSettings, database_path
from shared.events import CallRecorded, ExchangeCompleted, ReplyInterrupted

T0 = datetime(2025, 11, 21, 10, 30, tzinfo=UTC)

HOSTILE = [
    "",
    "   ",
    "c++",
    '"hi',
    '"',
    '""',
    "AND",
    "OR",
    "NOT",
    "NEAR",
    "NEAR(a b)",
    "a OR b NOT c",
    "foo-bar",
    "3:00",
    "user_text:secret",
    "*",
    "-",
    "^",
    "(",
    ")",
    ":",
    "'; DROP TABLE captures; --",
    "\U0001f600",
    '"unbalanced "quotes" here',
    "x" * 2000,
    "learn* " * 300,
    "\x00\x01\x02",
    "\ud800",
    "l*",
]

V1_SCHEMA = """
CREATE TABLE captures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    timestamp DATETIME DEFAULT CURRENT_TIMESTAMP,
    user_text TEXT NOT NULL,
    agent_text TEXT NOT NULL,
    metadata TEXT
);
CREATE VIRTUAL TABLE captures_fts USING fts5(
    session_id UNINDEXED, user_text, agent_text, content=captures, content_rowid=id
);
CREATE INDEX idx_session_timestamp ON captures(session_id, timestamp DESC);
CREATE TRIGGER captures_ai AFTER INSERT ON captures BEGIN
    INSERT INTO captures_fts(rowid, session_id, user_text, agent_text)
    VALUES (new.id, new.session_id, new.user_text, new.agent_text);
END;
CREATE TRIGGER captures_ad AFTER DELETE ON captures BEGIN
    DELETE FROM captures_fts WHERE rowid = old.id;
END;
CREATE TRIGGER captures_au AFTER UPDATE ON captures BEGIN
    UPDATE captures_fts
    SET user_text = new.user_text, agent_text = new.agent_text
    WHERE rowid = new.id;
END;
"""

FILLER = " ".join(f"filler{i}" for i in range(60))

# A phone call's session, as telephony names it, and a reply the caller talked over.
CALL = "twilio_CA0123456789abcdef"
WRITTEN = "Photosynthesis turns light into sugar. Chlorophyll absorbs the red light."
HEARD = "Photosynthesis turns light"


def exchange(
    user_text: str,
    agent_text: str = "Tell me more.",
    *,
    session_id: str = "s1",
    occurred_at: datetime = T0,
    event_id: str | None = None,
) -> ExchangeCompleted:
    extra = {"event_id": event_id} if event_id else {}
    return ExchangeCompleted(
        session_id=session_id,
        # A call's exchanges come from telephony, as the archive expects of them.
        source="twilio" if session_id.startswith("twilio_") else "api",
        occurred_at=occurred_at,
        user_text=user_text,
        agent_text=agent_text,
        intent="statement",
        responder="r-1",
        **extra,
    )


def interrupted(event_id: str, heard_text: str, heard_ms: int | None = 1800) -> ReplyInterrupted:
    return ReplyInterrupted(
        session_id=CALL,
        source="twilio",
        occurred_at=T0,
        in_reply_to=event_id,
        heard_text=heard_text,
        heard_ms=heard_ms,
    )


def recorded(sid: str, duration_s: int | None = 42, *, session_id: str = "") -> CallRecorded:
    return CallRecorded(
        session_id=session_id or CALL,
        source="twilio",
        occurred_at=T0,
        recording_sid=sid,
        recording_url=f"https://api.twilio.com/2010-04-01/Accounts/AC1/Recordings/{sid}",
        duration_s=duration_s,
    )


def listed(sid: str, duration_s: int | None = 42) -> dict[str, Any]:
    """A recording as a capture's metadata lists it."""
    url = recorded(sid).recording_url
    return {"sid": sid, "url": url, "duration_s": duration_s}


@pytest.fixture
async def archive(tmp_path: Path) -> AsyncIterator[Archive]:
    async with Archive(tmp_path / "var" / "archive.db", read_connections=2) as opened:
        yield opened


def plain_sql(path: Path) -> sqlite3.Connection:
    """A second, ordinary connection, as an operator's sqlite3 shell would be."""
    return sqlite3.connect(path, isolation_level=None, timeout=5)


async def test_open_creates_folder_wal_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "archive.db"
    async with Archive(path) as archive:
        assert await archive.stats() == (0, 0, None)
    conn = plain_sql(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {
        "captures",
        "captures_fts",
        "idx_session_timestamp",
        "capture_stats",
        "learner_stats",
        "idx_captures_learner_timestamp",
    } <= names
    columns = [row[1] for row in conn.execute("PRAGMA table_info(captures)")]
    assert columns == [
        "id",
        "session_id",
        "timestamp",
        "user_text",
        "agent_text",
        "metadata",
        "event_id",
        "learner",
    ]
    conn.close()
    # Opening again is a no-op for the schema.
    async with Archive(path) as archive:
        assert await archive.stats() == (0, 0, None)


async def test_bm25_short_repeated_outranks_long_single(archive: Archive) -> None:
    saved = await archive.save_many(
        [
            exchange(f"{FILLER} photosynthesis {FILLER}", session_id="long"),
            exchange("photosynthesis and photosynthesis", session_id="short"),
            exchange("nothing relevant here", session_id="other"),
        ]
    )
    assert saved == 3
    hits = await archive.search("photosynthesis", 10)
    assert [hit.session_id for hit in hits] == ["short", "long"]
    assert hits[0].user_text == "photosynthesis and photosynthesis"
    assert hits[0].timestamp == "2025-11-21T10:30:00"


async def test_search_limit_phrase_and_prefix(archive: Archive) -> None:
    await archive.save_many(
        [
            exchange("machine learning is fun", session_id="a"),
            exchange("learning about a machine", session_id="b"),
            exchange("lean and mean", session_id="c"),
        ]
    )
    assert {h.session_id for h in await archive.search("machine learning", 10)} == {"a", "b"}
    assert [h.session_id for h in await archive.search('"machine learning"', 10)] == ["a"]
    assert {h.session_id for h in await archive.search("lea*", 10)} == {"a", "b", "c"}
    assert len(await archive.search("lea*", 2)) == 2
    assert await archive.search("lea*", 0) == []
    assert await archive.search("NOT", 10) == []


async def test_snippets_escape_html_and_mark_terms(archive: Archive) -> None:
    text = "<script>alert('x')</script> I study photosynthesis & light"
    await archive.save_many([exchange(text, "Plants use <b>light</b>.")])
    (hit,) = await archive.search("photosynthesis", 5)
    assert hit.user_text == text  # raw, as stored
    assert "&lt;script&gt;" in hit.user_snippet
    assert "<mark>photosynthesis</mark>" in hit.user_snippet
    assert "&amp;" in hit.user_snippet
    # The only markup left in a snippet is <mark>.
    assert "<" not in re.sub(r"</?mark>", "", hit.user_snippet)
    assert hit.agent_snippet == "Plants use &lt;b&gt;light&lt;/b&gt;."

    (hit,) = await archive.search("light", 5)
    assert "<mark>light</mark>" in hit.agent_snippet
    assert "<" not in re.sub(r"</?mark>", "", hit.agent_snippet)


async def test_control_characters_are_stripped(archive: Archive) -> None:
    await archive.save_many([exchange("tab\there\nnew\x02line\x00 \x1bend", "ok\x03")])
    (item,) = await archive.history("s1", 5)
    assert item.user_text == "tab\there\nnewline end"
    assert item.agent_text == "ok"
    (hit,) = await archive.search("newline", 5)
    assert hit.user_snippet == "tab\there\n<mark>newline</mark> end"


async def test_hostile_queries_return_lists(archive: Archive) -> None:
    await archive.save_many(
        [exchange("c and c++ at 3:00, not near the foo-bar", "learning OR learn")]
    )
    for query in HOSTILE:
        hits = await archive.search(query, 20)
        assert isinstance(hits, list), query
    assert len(await archive.search("c++", 20)) == 1
    assert len(await archive.search("3:00", 20)) == 1
    assert len(await archive.search("foo-bar", 20)) == 1
    assert len(await archive.search('"hi', 20)) == 0


async def test_redelivered_event_is_stored_once(archive: Archive) -> None:
    first = exchange("hello there", event_id="evt-1")
    again = exchange("hello there, regenerated answer", event_id="evt-1")
    assert await archive.save_many([first, exchange("other", event_id="evt-2")]) == 2
    assert await archive.save_many([again]) == 0
    assert await archive.save_many([first, first]) == 0
    assert await archive.save_many([exchange("x", event_id="evt-3")] * 2) == 1
    assert (await archive.stats())[0] == 3
    assert [h.user_text for h in await archive.search("hello", 10)] == ["hello there"]


async def test_concurrent_batches_do_not_interfere(archive: Archive) -> None:
    batches = [
        [exchange(f"batch {b} item {i}", session_id=f"s{b}") for i in range(50)] for b in range(8)
    ]
    counts = await asyncio.gather(*(archive.save_many(batch) for batch in batches))
    assert counts == [50] * 8
    assert await archive.stats() == (400, 8, "2025-11-21T10:30:00")


async def test_history_newest_first_with_limit(archive: Archive) -> None:
    await archive.save_many(
        [
            exchange("second", occurred_at=T0 + timedelta(minutes=1)),
            exchange("first", occurred_at=T0),
            exchange("third (same second as fourth)", occurred_at=T0 + timedelta(minutes=2)),
            exchange("fourth", occurred_at=T0 + timedelta(minutes=2)),
            exchange("someone else", session_id="s2", occurred_at=T0 + timedelta(hours=1)),
        ]
    )
    history = await archive.history("s1", 10)
    assert [h.user_text for h in history] == [
        "fourth",
        "third (same second as fourth)",
        "second",
        "first",
    ]
    assert [h.user_text for h in await archive.history("s1", 2)] == [
        "fourth",
        "third (same second as fourth)",
    ]
    assert await archive.history("nobody", 10) == []
    assert await archive.history("s1", 0) == []
    assert history[-1].timestamp == "2025-11-21T10:30:00"
    assert history[0].metadata is not None
    assert json.loads(history[0].metadata) == {
        "source": "api",
        "intent": "statement",
        "input": "text",
        "responder": "r-1",
    }


async def test_an_unanswered_exchange_keeps_the_words_and_says_why(archive: Archive) -> None:
    unanswered = exchange("a thought nobody waited for", "").model_copy(update={"expired": True})
    assert await archive.save_many([unanswered]) == 1
    (item,) = await archive.history("s1", 10)
    assert (item.user_text, item.agent_text) == ("a thought nobody waited for", "")
    assert item.metadata is not None and json.loads(item.metadata)["expired"] is True
    assert [h.user_text for h in await archive.search("nobody", 10)] == [item.user_text]


async def test_timestamps_are_stored_in_utc(archive: Archive) -> None:
    paris = timezone(timedelta(hours=1))
    await archive.save_many(
        [
            exchange("aware", occurred_at=datetime(2025, 11, 21, 11, 30, 5, 999, tzinfo=paris)),
            exchange("naive", occurred_at=datetime(2025, 11, 21, 9, 0)),
        ]
    )
    stamps = {h.user_text: h.timestamp for h in await archive.history("s1", 5)}
    assert stamps == {"aware": "2025-11-21T10:30:05", "naive": "2025-11-21T09:00:00"}


async def test_stats_follow_inserts_updates_and_deletes(archive: Archive) -> None:
    assert await archive.stats() == (0, 0, None)
    await archive.save_many(
        [
            exchange("a", session_id="s1", occurred_at=T0 + timedelta(days=1)),
            exchange("b", session_id="s1", occurred_at=T0),
            exchange("c", session_id="s2", occurred_at=T0 + timedelta(days=2)),
        ]
    )
    assert await archive.stats() == (3, 2, "2025-11-23T10:30:00")

    conn = plain_sql(archive.path)
    conn.execute("UPDATE captures SET session_id = 's3' WHERE user_text = 'a'")
    assert await archive.stats() == (3, 3, "2025-11-23T10:30:00")
    conn.execute("UPDATE captures SET session_id = 's1' WHERE user_text = 'c'")
    assert await archive.stats() == (3, 2, "2025-11-23T10:30:00")
    conn.execute("DELETE FROM captures WHERE user_text = 'c'")
    assert await archive.stats() == (2, 2, "2025-11-22T10:30:00")
    conn.execute("DELETE FROM captures")
    conn.close()
    assert await archive.stats() == (0, 0, None)


async def test_index_stays_consistent_after_plain_sql_changes(archive: Archive) -> None:
    await archive.save_many(
        [
            exchange("old words about volcanoes", "lava"),
            exchange("keep me about glaciers", "ice"),
            exchange("delete me about deserts", "sand"),
        ]
    )
    conn = plain_sql(archive.path)
    conn.execute("UPDATE captures SET user_text = 'fresh words on tides' WHERE id = 1")
    conn.execute("UPDATE captures SET metadata = '{}' WHERE id = 2")
    conn.execute("DELETE FROM captures WHERE id = 3")
    conn.close()

    await archive.integrity_check()
    assert await archive.search("volcanoes", 5) == []
    assert [h.id for h in await archive.search("tides", 5)] == [1]
    assert [h.id for h in await archive.search("lava", 5)] == [1]
    assert await archive.search("deserts", 5) == []
    assert [h.id for h in await archive.search("glaciers", 5)] == [2]


def captured(path: Path, event_id: str) -> tuple[str, dict[str, Any]]:
    """(agent_text, metadata) of the capture of `event_id`."""
    conn = plain_sql(path)
    row = conn.execute(
        "SELECT agent_text, metadata FROM captures WHERE event_id = ?", (event_id,)
    ).fetchone()
    conn.close()
    assert row is not None, event_id
    return row[0], json.loads(row[1])


def call_exchange(event_id: str, agent_text: str = WRITTEN) -> ExchangeCompleted:
    return exchange("how do plants eat?", agent_text, session_id=CALL, event_id=event_id)


@pytest.mark.parametrize("interruption_first", [True, False])
async def test_an_interrupted_reply_is_stored_as_heard_in_either_order(
    archive: Archive, interruption_first: bool
) -> None:
    # The control character is cleaned like any stored text.
    cut = interrupted("call-1", "Photosynthesis\x02 turns light")
    if interruption_first:
        assert await archive.save_call_events([cut]) == 1
    assert await archive.save_many([call_exchange("call-1"), call_exchange("call-2")]) == 2
    if not interruption_first:
        assert await archive.save_call_events([cut]) == 1

    agent_text, metadata = captured(archive.path, "call-1")
    assert agent_text == HEARD
    assert metadata["interrupted"] == {"heard_ms": 1800, "written_text": WRITTEN}
    assert metadata["source"] == "twilio"
    agent_text, metadata = captured(archive.path, "call-2")
    assert agent_text == WRITTEN
    assert "interrupted" not in metadata

    # The index follows: the heard words find it, the unheard ones only the other.
    await archive.integrity_check()
    (other,) = await archive.search("chlorophyll", 10)
    assert other.agent_text == WRITTEN
    assert {h.agent_text for h in await archive.search("photosynthesis", 10)} == {HEARD, WRITTEN}


async def test_an_interruption_applied_twice_keeps_the_written_text(archive: Archive) -> None:
    await archive.save_many([call_exchange("call-1")])
    assert await archive.save_call_events([interrupted("call-1", HEARD)]) == 1
    assert await archive.save_call_events([interrupted("call-1", HEARD)] * 2) == 0
    assert await archive.save_many([call_exchange("call-1")]) == 0
    agent_text, metadata = captured(archive.path, "call-1")
    assert agent_text == HEARD
    assert metadata["interrupted"] == {"heard_ms": 1800, "written_text": WRITTEN}
    # A different account of the same cut replaces the first, over the written text.
    assert await archive.save_call_events([interrupted("call-1", "Photosynthesis", None)]) == 1
    agent_text, metadata = captured(archive.path, "call-1")
    assert agent_text == "Photosynthesis"
    assert metadata["interrupted"] == {"heard_ms": None, "written_text": WRITTEN}
    await archive.integrity_check()
    assert await archive.search("light", 10) == []


async def test_an_interruption_stored_first_is_not_applied_twice(archive: Archive) -> None:
    assert await archive.save_call_events([interrupted("call-1", HEARD)]) == 1
    await archive.save_many([call_exchange("call-1")])
    assert await archive.save_call_events([interrupted("call-1", HEARD)]) == 0
    agent_text, metadata = captured(archive.path, "call-1")
    assert (agent_text, metadata["interrupted"]["written_text"]) == (HEARD, WRITTEN)


async def test_an_interruption_of_a_row_without_metadata(archive: Archive) -> None:
    # v1 rows may have NULL metadata; a hand-edited one may not be JSON at all.
    conn = plain_sql(archive.path)
    conn.executemany(
        "INSERT INTO captures (event_id, session_id, user_text, agent_text, metadata) "
        "VALUES (?, ?, 'hi', ?, ?)",
        [("null-meta", CALL, WRITTEN, None), ("bad-meta", CALL, WRITTEN, "not json")],
    )
    conn.close()
    cuts = [interrupted("null-meta", HEARD), interrupted("bad-meta", HEARD)]
    assert await archive.save_call_events([*cuts, recorded("RE1")]) == 3
    expected = {
        "interrupted": {"heard_ms": 1800, "written_text": WRITTEN},
        "recordings": [listed("RE1")],
    }
    assert captured(archive.path, "null-meta") == (HEARD, expected)
    assert captured(archive.path, "bad-meta") == (HEARD, expected)
    await archive.integrity_check()


@pytest.mark.parametrize("recorded_before", [0, 1, 2])
async def test_recordings_reach_every_capture_of_their_call_in_any_order(
    archive: Archive, recorded_before: int
) -> None:
    recordings = [recorded("RE1"), recorded("RE2", None)]
    assert await archive.save_call_events(recordings[:recorded_before]) == recorded_before
    exchanges = [call_exchange("call-1"), call_exchange("call-2"), exchange("web", event_id="web")]
    assert await archive.save_many(exchanges) == 3
    assert await archive.save_call_events(recordings[recorded_before:]) == 2 - recorded_before

    expected = [listed("RE1"), listed("RE2", None)]
    for event_id in ("call-1", "call-2"):
        assert captured(archive.path, event_id)[1]["recordings"] == expected
    assert "recordings" not in captured(archive.path, "web")[1]
    # Written before or after them, a later exchange of the call gets both.
    await archive.save_many([call_exchange("call-3")])
    assert captured(archive.path, "call-3")[1]["recordings"] == expected


async def test_a_recording_is_stored_once(archive: Archive) -> None:
    await archive.save_many([call_exchange("call-1")])
    assert await archive.save_call_events([recorded("RE1"), recorded("RE1")]) == 1
    assert await archive.save_call_events([recorded("RE1")]) == 0
    # The same sid under another session is the same recording: ignored.
    assert await archive.save_call_events([recorded("RE1", session_id="twilio_other")]) == 0
    assert captured(archive.path, "call-1")[1]["recordings"] == [listed("RE1")]
    conn = plain_sql(archive.path)
    rows = conn.execute("SELECT recording_sid, session_id, duration_s FROM recordings").fetchall()
    conn.close()
    assert rows == [("RE1", CALL, 42)]


async def test_interruptions_and_recordings_together_in_either_order(tmp_path: Path) -> None:
    events: list[ReplyInterrupted | CallRecorded] = [interrupted("call-1", HEARD), recorded("RE1")]
    results = []
    for name, first in (("events-first", True), ("exchange-first", False)):
        async with Archive(tmp_path / f"{name}.db") as archive:
            if first:
                await archive.save_call_events(events)
            await archive.save_many([call_exchange("call-1")])
            if not first:
                await archive.save_call_events(events)
            results.append(captured(archive.path, "call-1"))
    assert results[0] == results[1]
    assert results[0][1]["recordings"] == [listed("RE1")]


def make_v1_database(path: Path) -> None:
    conn = plain_sql(path)
    conn.executescript(V1_SCHEMA)
    conn.executemany(
        "INSERT INTO captures (session_id, timestamp, user_text, agent_text, metadata) "
        "VALUES (?, ?, ?, ?, ?)",
        [
            (
                "v1-a",
                "2025-11-20T08:00:00",
                "old words about volcanoes",
                "lava",
                '{"source": "api"}',
            ),
            ("v1-a", "2025-11-20T08:01:00", "delete me about deserts", "sand", '{"source": "api"}'),
            ("v1-b", "2025-11-20T09:00:00", "glaciers", "ice", '{"source": "twilio"}'),
        ],
    )
    # What v1's triggers do to the index on a plain UPDATE and DELETE.
    conn.execute("UPDATE captures SET user_text = 'fresh words on tides' WHERE id = 1")
    conn.execute("DELETE FROM captures WHERE id = 2")
    conn.close()


def test_v1_triggers_corrupt_the_index(tmp_path: Path) -> None:
    """v1's plain UPDATE/DELETE on the FTS table leave stale index entries.

    FTS5's basic 'integrity-check' does not notice (it checks the index only
    against itself); the content check used by Archive.integrity_check does.
    """
    path = tmp_path / "v1.db"
    make_v1_database(path)
    conn = plain_sql(path)
    conn.execute("INSERT INTO captures_fts(captures_fts) VALUES ('integrity-check')")
    with pytest.raises(sqlite3.DatabaseError, match="malformed"):
        conn.execute("INSERT INTO captures_fts(captures_fts, rank) VALUES ('integrity-check', 1)")

    def match(word: str) -> list[int]:
        rows = conn.execute("SELECT rowid FROM captures_fts WHERE captures_fts MATCH ?", (word,))
        return [row[0] for row in rows]

    # The updated row is still found by its old words, the deleted one too.
    assert match("volcanoes") == [1]
    assert match("deserts") == [2]
    conn.close()


async def test_v1_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    make_v1_database(path)
    async with Archive(path) as archive:
        await archive.integrity_check()
        assert await archive.stats() == (2, 2, "2025-11-20T09:00:00")
        assert await archive.search("volcanoes", 5) == []
        assert await archive.search("deserts", 5) == []
        assert [h.id for h in await archive.search("tides", 5)] == [1]
        # v1's rows are the default learner's, and nobody else's.
        assert await archive.stats("local") == (2, 2, "2025-11-20T09:00:00")
        assert await archive.stats("alice") == (0, 0, None)
        assert await archive.search("tides", 5, "alice") == []
        assert await archive.history("v1-a", 5, "alice") == []
        assert [h.id for h in await archive.history("v1-a", 5, "local")] == [1]
        await archive.save_many([exchange("new glaciers", session_id="v1-b", event_id="e1")])
        assert await archive.stats() == (3, 2, "2025-11-21T10:30:00")
        assert len(await archive.search("glaciers", 5)) == 2
        assert await archive.save_call_events([recorded("RE1", session_id="v1-b")]) == 1
    conn = plain_sql(path)
    triggers = {
        row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
    }
    assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION
    metadata = [
        json.loads(row[0]) for row in conn.execute("SELECT metadata FROM captures ORDER BY id")
    ]
    learners = {row[0] for row in conn.execute("SELECT learner FROM captures")}
    conn.close()
    assert learners == {"local"}
    assert not triggers & {"captures_ai", "captures_ad", "captures_au"}
    assert metadata == [
        {"source": "api"},
        {"source": "twilio", "recordings": [listed("RE1")]},
        {**metadata[2], "recordings": [listed("RE1")]},
    ]


def fts_blocks(path: Path) -> list[tuple[int, bytes]]:
    """The FTS index as stored: a rebuild writes it anew, as a single segment."""
    conn = plain_sql(path)
    blocks = conn.execute("SELECT id, block FROM captures_fts_data ORDER BY id").fetchall()
    conn.close()
    return blocks


async def current_file_without_call_tables(path: Path) -> None:
    """A file of today's schema version that lacks the call tables (as one
    written before they were added would, had the version not changed)."""
    async with Archive(path) as archive:
        await archive.save_many([exchange("about volcanoes", WRITTEN, event_id="e1")])
        await archive.save_many([exchange("about glaciers", session_id="s2", event_id="e2")])
    conn = plain_sql(path)
    conn.executescript("DROP TABLE heard; DROP TABLE recordings;")
    conn.close()


async def test_a_current_file_gets_missing_tables_and_keeps_its_index(tmp_path: Path) -> None:
    path = tmp_path / "current.db"
    await current_file_without_call_tables(path)
    blocks = fts_blocks(path)
    for _ in range(2):
        async with Archive(path) as archive:
            await archive.integrity_check()
            assert await archive.stats() == (2, 2, "2025-11-21T10:30:00")
            assert [h.user_text for h in await archive.search("volcanoes", 5)] == [
                "about volcanoes"
            ]
    assert fts_blocks(path) == blocks
    conn = plain_sql(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert {"heard", "recordings", "idx_recordings_session_id", "captures_fts_au"} <= names

    async with Archive(path) as archive:
        assert await archive.save_call_events([interrupted("e1", HEARD)]) == 1
        await archive.integrity_check()
        assert await archive.search("chlorophyll", 5) == []
    assert captured(path, "e1")[0] == HEARD


async def test_a_file_older_than_the_fts_version_has_its_index_rebuilt(tmp_path: Path) -> None:
    # The contrast that shows fts_blocks would notice a rebuild.
    path = tmp_path / "version-0.db"
    await current_file_without_call_tables(path)
    conn = plain_sql(path)
    conn.execute("PRAGMA user_version = 0")
    conn.close()
    blocks = fts_blocks(path)
    async with Archive(path) as archive:
        await archive.integrity_check()
        assert len(await archive.search("glaciers", 5)) == 1
    assert fts_blocks(path) != blocks


async def test_reads_are_not_blocked_by_an_open_write(archive: Archive) -> None:
    await archive.save_many([exchange("committed text")])
    conn = plain_sql(archive.path)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT INTO captures (session_id, user_text, agent_text) VALUES ('s9', 'pending', 'x')"
    )
    try:
        hits = await asyncio.wait_for(archive.search("committed", 5), timeout=2)
        assert len(hits) == 1
        assert await archive.search("pending", 5) == []
        assert await asyncio.wait_for(archive.stats(), timeout=2) == (1, 1, "2025-11-21T10:30:00")
    finally:
        conn.execute("ROLLBACK")
        conn.close()


async def test_closed_archive_refuses_work(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "x.db")
    with pytest.raises(RuntimeError):
        await archive.search("anything", 5)
    await archive.open()
    await archive.close()
    await archive.close()
    with pytest.raises(RuntimeError):
        await archive.save_many([exchange("late")])


@pytest.fixture
def large_archive_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make a 200-row archive take the paths of a 1,000,000-row one.

    Every row counts as "large archive", and a word in more than 40 rows as
    too common to rank by.
    """
    monkeypatch.setattr(search, "EXACT_RANKING_MAX_ROWS", 0)
    monkeypatch.setattr(search, "DENSITY_WINDOW", 1000)
    monkeypatch.setattr(search, "COUNT_BUDGET_ROWS", 40)
    monkeypatch.setattr(search, "SCAN_BUDGET_ROWS", 40)


async def zebra_archive(archive: Archive) -> dict[str, int]:
    """197 rows of filler with "the", then three zebras; returns their ids."""
    await archive.save_many([exchange(f"the filler row {i}") for i in range(100)])
    await archive.save_many([exchange("the zebra zebra", session_id="short-twice")])
    await archive.save_many([exchange(f"the filler row {i}") for i in range(100, 150)])
    await archive.save_many([exchange(f"the zebra {FILLER}", session_id="long-once")])
    await archive.save_many([exchange("a zebra and the sun", session_id="short-once")])
    await archive.save_many([exchange(f"the filler row {i}") for i in range(150, 197)])
    ids = {h.session_id: h.id for h in await archive.search("zebra", 10)}
    assert len(ids) == 3
    return ids


@pytest.mark.usefixtures("large_archive_rules")
async def test_large_archive_ranks_by_affordable_words(archive: Archive) -> None:
    ids = await zebra_archive(archive)
    assert (await archive.stats())[0] == 200

    # A single rare word: bm25() of the query itself.
    assert [h.session_id for h in await archive.search("zebra", 10)] == [
        "short-twice",
        "short-once",
        "long-once",
    ]
    # "the" is in every row: too common to rank by, so the newest come first.
    assert [h.id for h in await archive.search("the", 3)] == [200, 199, 198]
    # Words ANDed: ranked by "zebra" alone.
    assert [h.session_id for h in await archive.search("the zebra", 10)] == [
        "short-twice",
        "short-once",
        "long-once",
    ]
    # A phrase selects; its words rank ("a zebra and the sun" has no "the zebra").
    hits = await archive.search('"the zebra"', 10)
    assert [h.session_id for h in hits] == ["short-twice", "long-once"]
    assert "<mark>the zebra</mark>" in hits[0].user_snippet
    assert ids["short-twice"] < ids["long-once"]


@pytest.mark.usefixtures("large_archive_rules")
async def test_large_archive_without_scan_budget_returns_newest(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    await zebra_archive(archive)
    monkeypatch.setattr(search, "SCAN_BUDGET_ROWS", 0)
    assert [h.session_id for h in await archive.search("the zebra", 10)] == [
        "short-once",
        "long-once",
        "short-twice",
    ]


async def test_newest_matches_forwards_backwards_and_past_the_cap(archive: Archive) -> None:
    ids = await zebra_archive(archive)
    conn = await db.connect(archive.path, busy_timeout_ms=1000, read_only=True)
    try:
        newest_three = sorted(ids.values(), reverse=True)
        for estimate in (0, 10**6):
            assert await search._newest(conn, '"zebra"', 2, estimate) == newest_three[:2]
        # Estimated few, but "the" is in 200 rows: over the forward cap (4 x 5).
        assert await search._newest(conn, '"the"', 5, 0) == [200, 199, 198, 197, 196]
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///./var/learning_captures.db", Path("var/learning_captures.db")),
        ("sqlite:///data/x.db", Path("data/x.db")),
        ("sqlite:////srv/data/x.db", Path("/srv/data/x.db")),
        ("sqlite+aiosqlite:///x.db", Path("x.db")),
        ("/srv/x.db", Path("/srv/x.db")),
        ("x.db", Path("x.db")),
    ],
)
def test_database_url_forms(url: str, expected: Path) -> None:
    assert database_path(url) == expected
    assert ArchiverSettings(database_url=url).database_path == expected


@pytest.mark.parametrize("url", ["postgres://h/db", "sqlite://host/x.db", "sqlite:///:memory:", ""])
def test_bad_database_urls(url: str) -> None:
    with pytest.raises(ValueError):
        database_path(url)


async def test_exchanges_that_are_no_call_are_not_looked_up(archive: Archive) -> None:
    """Call events concern phone calls only: a batch of other exchanges is written
    without looking for any (the usual batch pays nothing for them)."""
    # An interruption naming a web exchange's id (which telephony never sends)
    # is not applied to it: only a call's exchanges are looked up.
    assert await archive.save_call_events([interrupted("web-1", "Tides")]) == 1
    assert await archive.save_many([exchange("Tides rise", event_id="web-1")]) == 1
    agent_text, metadata = captured(archive.path, "web-1")
    assert agent_text == "Tell me more." and "interrupted" not in metadata
