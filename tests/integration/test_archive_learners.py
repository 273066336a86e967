"""Whose captures, on real SQLite files: one learner's search, history and stats
never show another's, and an archive written before learners (schema version 2,
or v1) is migrated with every row kept, all of them the default learner's."""

import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.archiver import db, search
from services.archiver.app import answer
from services.archiver.fts_query import learner_token, owned_by
from services.archiver.repository import Archive
from shared.events import (
    DEFAULT_LEARNER,
    ExchangeCompleted,
    HistoryQuery,
    HistoryReply,
    SearchQuery,
    SearchReply,
    StatsQuery,
    StatsReply,
)
from tests.support import archive_v2

T0 = datetime(2025, 11, 21, 10, 30, tzinfo=UTC)
# unicode61 would make both the tokens "ann" "1": the archive must not.
ANN = "ann.1"
OTHER_ANN = "Ann_1"
CALL = "twilio_CAfeedface"


def exchange(
    learner: str,
    user_text: str,
    *,
    session_id: str,
    minutes: int = 0,
    agent_text: str = "Tell me more.",
) -> ExchangeCompleted:
    return ExchangeCompleted(
        session_id=session_id,
        source="websocket",
        learner=learner,
        occurred_at=T0 + timedelta(minutes=minutes),
        user_text=user_text,
        agent_text=agent_text,
        intent="statement",
        responder="r-1",
    )


def plain_sql(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, timeout=5)


def rows(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = plain_sql(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def counted(path: Path) -> list[tuple[Any, ...]]:
    """learner_stats as a full count makes it (learners left with no row aside)."""
    return rows(
        path,
        "SELECT learner, count(*), count(DISTINCT session_id) FROM captures "
        "GROUP BY learner ORDER BY learner",
    )


def kept(path: Path) -> list[tuple[Any, ...]]:
    return rows(
        path,
        "SELECT learner, total_captures, unique_sessions FROM learner_stats "
        "WHERE total_captures > 0 ORDER BY learner",
    )


@pytest.fixture
async def archive(tmp_path: Path) -> AsyncIterator[Archive]:
    async with Archive(tmp_path / "archive.db", read_connections=2) as opened:
        yield opened


@pytest.fixture(params=["small", "large"])
def ranking_rules(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The exact ranking of a small archive, and the estimated one of a large
    archive (see test_archive_repository's large_archive_rules)."""
    if request.param == "large":
        monkeypatch.setattr(search, "EXACT_RANKING_MAX_ROWS", 0)
        monkeypatch.setattr(search, "DENSITY_WINDOW", 1000)
        monkeypatch.setattr(search, "COUNT_BUDGET_ROWS", 40)
        monkeypatch.setattr(search, "SCAN_BUDGET_ROWS", 40)
    return str(request.param)


async def two_learners(archive: Archive) -> dict[str, set[int]]:
    """Ann's and the other Ann's captures, common words in both, rare ones in
    one; both used the session id "shared". Returns each one's ids."""
    await archive.save_many(
        [exchange(ANN, f"the filler row {i}", session_id="a-filler") for i in range(30)]
        + [exchange(OTHER_ANN, f"the filler row {i}", session_id="b-filler") for i in range(60)]
    )
    await archive.save_many(
        [
            exchange(ANN, "the zebra of learning", session_id="a1", minutes=1),
            exchange(OTHER_ANN, "the zebra zebra and the octopus", session_id="b1", minutes=2),
            exchange(ANN, "the quokka learns the piano", session_id="shared", minutes=3),
            exchange(OTHER_ANN, "the octopus learning", session_id="shared", minutes=4),
            exchange(ANN, "learning about the sea", session_id="shared", minutes=5),
        ]
    )
    owners: dict[str, set[int]] = {ANN: set(), OTHER_ANN: set()}
    for rowid, learner in rows(archive.path, "SELECT id, learner FROM captures"):
        owners[learner].add(rowid)
    return owners


async def found(archive: Archive, query: str, learner: str | None) -> set[int]:
    return {hit.id for hit in await archive.search(query, 200, learner)}


@pytest.mark.usefixtures("ranking_rules")
async def test_neither_learner_sees_the_others_captures(archive: Archive) -> None:
    owners = await two_learners(archive)
    everyone = owners[ANN] | owners[OTHER_ANN]
    for learner, other in ((ANN, OTHER_ANN), (OTHER_ANN, ANN)):
        # A word everyone used: each gets all of their own, none of the other's.
        assert await found(archive, "the", learner) == owners[learner]
        assert await found(archive, "the*", learner) == owners[learner]
        assert await found(archive, "lea*", learner) <= owners[learner]
        assert await found(archive, '"the filler"', learner) <= owners[learner]
        # The other's id, as its token or as typed, finds none of their rows.
        assert await found(archive, learner_token(other), learner) == set()
        assert await found(archive, other, learner) == set()
    assert await found(archive, "the", None) == everyone
    # Words only one of them used.
    assert await found(archive, "octopus", ANN) == set()
    assert await found(archive, "quokka", OTHER_ANN) == set()
    assert len(await found(archive, "octopus", OTHER_ANN)) == 2
    (quokka,) = await archive.search("quokka", 5, ANN)
    assert "<mark>quokka</mark>" in quokka.user_snippet
    # The rare word both used: each one's own, ranked within it.
    zebras = await archive.search("zebra", 5, OTHER_ANN)
    assert [hit.user_text for hit in zebras] == ["the zebra zebra and the octopus"]
    assert [hit.user_text for hit in await archive.search("zebra", 5, ANN)] == [
        "the zebra of learning"
    ]
    assert len(await archive.search("the", 3, ANN)) == 3
    assert await archive.search("the", 5, "nobody") == []


async def test_the_fts_query_alone_tells_the_learners_apart(archive: Archive) -> None:
    """Without the last statement's check on `captures.learner`: ids that unicode61
    would tokenize alike ("ann" "1") are different tokens in the index."""
    owners = await two_learners(archive)
    for learner in (ANN, OTHER_ANN):
        selected = rows(
            archive.path,
            "SELECT rowid FROM captures_fts WHERE captures_fts MATCH ?",
            (owned_by(learner, '"the"'),),
        )
        assert {rowid for (rowid,) in selected} == owners[learner]


async def test_history_and_stats_are_each_learners_own(archive: Archive) -> None:
    await two_learners(archive)
    mine = [h.user_text for h in await archive.history("shared", 10, ANN)]
    assert mine == ["learning about the sea", "the quokka learns the piano"]
    theirs = [h.user_text for h in await archive.history("shared", 10, OTHER_ANN)]
    assert theirs == ["the octopus learning"]
    assert len(await archive.history("shared", 10, None)) == 3
    assert await archive.history("a1", 10, OTHER_ANN) == []
    assert await archive.history("a1", 10, "nobody") == []

    assert await archive.stats(ANN) == (33, 3, "2025-11-21T10:35:00")
    assert await archive.stats(OTHER_ANN) == (62, 3, "2025-11-21T10:34:00")
    # Everyone's (an admin's): "shared" is one session.
    assert await archive.stats(None) == (95, 5, "2025-11-21T10:35:00")
    assert await archive.stats("nobody") == (0, 0, None)
    assert kept(archive.path) == counted(archive.path)


async def test_queries_are_answered_for_their_learner(archive: Archive) -> None:
    await two_learners(archive)
    reply = await answer(archive, SearchQuery(query="octopus", limit=5, reply_to="r", learner=ANN))
    assert isinstance(reply, SearchReply) and reply.results == []
    reply = await answer(
        archive, SearchQuery(query="octopus", limit=5, reply_to="r", learner=OTHER_ANN)
    )
    assert isinstance(reply, SearchReply) and len(reply.results) == 2
    history = await answer(
        archive, HistoryQuery(session_id="shared", limit=5, reply_to="r", learner=OTHER_ANN)
    )
    assert isinstance(history, HistoryReply) and len(history.history) == 1
    stats = await answer(archive, StatsQuery(reply_to="r", learner=ANN))
    assert isinstance(stats, StatsReply) and stats.total_captures == 33
    stats = await answer(archive, StatsQuery(reply_to="r", learner=None))
    assert isinstance(stats, StatsReply) and stats.total_captures == 95


@pytest.mark.usefixtures("ranking_rules")
async def test_the_only_learner_is_searched_without_the_filter_and_still_alone(
    archive: Archive,
) -> None:
    await archive.save_many([exchange(ANN, f"the walrus {i}", session_id="a") for i in range(50)])
    assert len(await found(archive, "walrus", ANN)) == 50
    await archive.save_many([exchange(OTHER_ANN, "the walrus too", session_id="b")])
    assert len(await found(archive, "walrus", ANN)) == 50
    assert len(await found(archive, "walrus", OTHER_ANN)) == 1
    # Counters that say Ann owns everything (as they would have a moment before the
    # other's first capture): the FTS query is then unfiltered, and the last
    # statement still keeps the other's row out.
    conn = plain_sql(archive.path)
    conn.execute("UPDATE learner_stats SET total_captures = 51 WHERE learner = ?", (ANN,))
    conn.close()
    assert await found(archive, "too", ANN) == set()
    assert len(await found(archive, "walrus", ANN)) == 50


async def test_counters_and_index_follow_plain_sql_changes_of_owner(archive: Archive) -> None:
    owners = await two_learners(archive)
    (zebra,) = await archive.search("zebra", 5, ANN)
    conn = plain_sql(archive.path)
    conn.execute("UPDATE captures SET learner = ? WHERE id = ?", (OTHER_ANN, zebra.id))
    conn.execute("UPDATE captures SET session_id = 'moved' WHERE session_id = 'b1'")
    conn.execute("DELETE FROM captures WHERE session_id = 'a-filler' AND id % 2 = 0")
    conn.close()
    assert kept(archive.path) == counted(archive.path)
    await archive.integrity_check()
    assert await archive.search("zebra", 5, ANN) == []
    assert {h.id for h in await archive.search("zebra", 5, OTHER_ANN)} >= {zebra.id}
    assert await archive.stats(ANN) == (32 - 15, 3 - 1, "2025-11-21T10:35:00")
    assert (await archive.stats(None))[0] == len(owners[ANN] | owners[OTHER_ANN]) - 15

    conn = plain_sql(archive.path)
    conn.execute("DELETE FROM captures")
    conn.close()
    assert kept(archive.path) == []
    assert await archive.stats(ANN) == (0, 0, None)


# What version 2 wrote: (event_id, session_id, timestamp, user_text, agent_text,
# metadata). Its first row came from v1 (no event id, no metadata).
V2_ROWS: list[tuple[str | None, str, str, str, str, str | None]] = [
    (None, "v1-a", "2025-11-19T08:00:00", "an old row from version one", "hello", None),
    ("e1", "s1", "2025-11-20T08:00:00", "old words about volcanoes", "lava", '{"source": "api"}'),
    ("e2", "s1", "2025-11-20T08:01:00", "delete me about deserts", "sand", '{"source": "api"}'),
    ("e3", "s2", "2025-11-20T09:00:00", "glaciers and the ice", "ice", '{"source": "api"}'),
    (
        "c1",
        CALL,
        "2025-11-20T10:00:00",
        "how do plants eat?",
        "Photosynthesis turns light",
        json.dumps(
            {
                "source": "twilio",
                "interrupted": {"heard_ms": 1800, "written_text": "Photosynthesis turns light."},
                "recordings": [{"sid": "RE1", "url": "https://x/RE1", "duration_s": 42}],
            }
        ),
    ),
    *(
        (f"f{i}", f"filler-{i % 7}", "2025-11-20T11:00:00", f"the filler row {i}", "ok", "{}")
        for i in range(120)
    ),
]


def make_v2_archive(path: Path) -> None:
    """An archive as version 2 left it, written as its repository and triggers did,
    with index entries an UPDATE and a DELETE changed."""
    conn = archive_v2.make_archive(path)
    conn.executemany(
        "INSERT INTO captures (event_id, session_id, timestamp, user_text, agent_text, metadata) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        V2_ROWS,
    )
    conn.execute("UPDATE captures SET user_text = 'fresh words on tides' WHERE event_id = 'e1'")
    conn.execute("DELETE FROM captures WHERE event_id = 'e2'")
    conn.execute("UPDATE captures SET metadata = '{\"source\": \"web\"}' WHERE event_id = 'e3'")
    conn.execute(
        "INSERT INTO heard (event_id, heard_text, heard_ms, received) "
        "VALUES ('c1', 'Photosynthesis turns light', 1800, '2025-11-20T10:00:05')"
    )
    conn.execute(
        "INSERT INTO recordings (recording_sid, session_id, url, duration_s, received) "
        f"VALUES ('RE1', '{CALL}', 'https://x/RE1', 42, '2025-11-20T10:05:00')"
    )
    # v2 checked its index the same way: the file is sound before the migration.
    conn.execute("INSERT INTO captures_fts(captures_fts, rank) VALUES ('integrity-check', 1)")
    conn.close()


_CAPTURES = (
    "SELECT id, event_id, session_id, timestamp, user_text, agent_text, metadata "
    "FROM captures ORDER BY id"
)


async def test_a_version_2_archive_keeps_every_row_as_the_default_learners(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v2.db"
    make_v2_archive(path)
    before = rows(path, _CAPTURES)
    calls = rows(path, "SELECT * FROM heard"), rows(path, "SELECT * FROM recordings")
    assert len(before) == len(V2_ROWS) - 1

    async with Archive(path) as archive:
        report = await archive.check_integrity()
        assert report.ok, report.reason
        assert rows(path, _CAPTURES) == before
        assert rows(path, "SELECT DISTINCT learner FROM captures") == [(DEFAULT_LEARNER,)]
        assert (rows(path, "SELECT * FROM heard"), rows(path, "SELECT * FROM recordings")) == calls
        assert rows(path, "PRAGMA user_version") == [(db.SCHEMA_VERSION,)]

        everyone = (len(before), 11, "2025-11-20T11:00:00")
        assert await archive.stats() == await archive.stats(None) == everyone
        assert kept(path) == counted(path) == [(DEFAULT_LEARNER, len(before), 11)]
        # The index was rebuilt from the rows as they are: the update's old words
        # and the deleted row are gone, every row is found by its own.
        assert await archive.search("volcanoes", 5) == []
        assert await archive.search("deserts", 5) == []
        assert [h.user_text for h in await archive.search("tides", 5)] == ["fresh words on tides"]
        assert len(await archive.search("filler", 200, DEFAULT_LEARNER)) == 120
        assert {h.session_id for h in await archive.search("version one", 5)} == {"v1-a"}
        assert len(await archive.history("s2", 5)) == 1
        # ... and nobody else's.
        assert await archive.search("tides", 5, ANN) == []
        assert await archive.search("filler", 5, ANN) == []
        assert await archive.history("s2", 5, ANN) == []
        assert await archive.stats(ANN) == (0, 0, None)

        # A new learner's writes after the migration.
        await archive.save_many([exchange(ANN, "tides on my own", session_id="s2")])
        await archive.integrity_check()
        assert [h.user_text for h in await archive.search("tides", 5, ANN)] == ["tides on my own"]
        assert [h.user_text for h in await archive.search("tides", 5)] == ["fresh words on tides"]
        assert await archive.stats(ANN) == (1, 1, "2025-11-21T10:30:00")
        assert (await archive.stats(None))[:2] == (len(before) + 1, 11)

    # Migrated once: a second open keeps the index as it is.
    blocks = rows(path, "SELECT id, block FROM captures_fts_data ORDER BY id")
    async with Archive(path) as archive:
        await archive.integrity_check()
    assert rows(path, "SELECT id, block FROM captures_fts_data ORDER BY id") == blocks
