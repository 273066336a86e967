"""Online backup and restore of the archive (python -m scripts.archive_backup), and the
integrity checks in the archiver's readiness, on real SQLite files and processes."""

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from faststream.redis import RedisBroker

from services.archiver import backup
from services.archiver.repository import Archive
from shared.broker import make_broker
from shared.events import ExchangeCompleted
from shared.settings import CommonSettings
from shared.streams import EXCHANGE_COMPLETED
from tests.support.services import ROOT, ServiceProcess, start_service
from tests.support.stack import eventually

# A connection that writes a row and dies without closing, as a crashed archiver
# does: the row is only in the -wal file.
HOT_WAL = """
import os, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA wal_autocheckpoint = 0")
conn.execute(
    "INSERT INTO captures (session_id, user_text, agent_text, event_id)"
    " VALUES ('s-wal', 'glaciers carve valleys', 'yes', 'wal-1')"
)
os._exit(0)
"""

Row = tuple[int, str, str]


def crash_leaving_wal(db: Path) -> None:
    subprocess.run([sys.executable, "-c", HOT_WAL, str(db)], check=True, timeout=30)


def wal_bytes(db: Path) -> int:
    """The size of `db`'s -wal file; -1 if there is none."""
    wal = Path(f"{db}-wal")
    return wal.stat().st_size if wal.exists() else -1


def exchange(n: int, topic: str = "volcanoes") -> ExchangeCompleted:
    return ExchangeCompleted(
        event_id=f"{topic}-{n:06d}",
        session_id=f"s-{n % 7}",
        source="api",
        user_text=f"how do {topic} work, question {n}",
        agent_text=f"Here is how {topic} work, in some detail.",
        intent="question",
    )


async def make_archive(path: Path, topic: str, count: int) -> None:
    async with Archive(path, read_connections=1) as archive:
        await archive.save_many([exchange(n, topic) for n in range(count)])


def rows(db: Path) -> list[Row]:
    with closing(sqlite3.connect(db, timeout=5)) as conn:
        found = conn.execute("SELECT id, event_id, user_text FROM captures ORDER BY id")
        return [(int(i), str(e), str(u)) for i, e, u in found]


def damage_index(db: Path) -> None:
    """Change a capture behind the FTS index's back, as v1's triggers did: the
    index keeps the old words, which only the content check sees."""
    with closing(sqlite3.connect(db, isolation_level=None, timeout=5)) as conn:
        (trigger,) = conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'captures_fts_au'"
        ).fetchone()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DROP TRIGGER captures_fts_au")
        conn.execute("UPDATE captures SET user_text = 'words the index never saw' WHERE id = 1")
        conn.execute(trigger)
        conn.execute("COMMIT")


def cli(*args: str | Path, database: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scripts.archive_backup", *map(str, args)],
        # The archive as the archiver names it: DATABASE_URL.
        env={**os.environ, "DATABASE_URL": f"sqlite:///{database}"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def result(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    return cast(dict[str, Any], json.loads(line))


def refused(done: subprocess.CompletedProcess[str], why: str) -> None:
    assert done.returncode != 0
    assert why in done.stderr, done.stderr
    assert done.stdout == ""


def start_archiver(
    redis_url: str, db: Path, tmp_path: Path, *, interval_s: float, ready_path: str = "/health"
) -> ServiceProcess:
    env = {
        "REDIS_URL": redis_url,
        "DATABASE_URL": f"sqlite:///{db}",
        "SUPERVISE_INTERVAL_S": "0.5",
        # Small batches: many commits while a backup is being taken.
        "ARCHIVE_BATCH_SIZE": "10",
        "ARCHIVE_INTEGRITY_INTERVAL_S": str(interval_s),
    }
    return start_service("archiver", env, tmp_path, ready_path=ready_path)


def health(service: ServiceProcess, path: str = "/health") -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"{service.base_url}{path}", timeout=5)
    return response.status_code, cast(dict[str, Any], response.json())


def archive_check(service: ServiceProcess) -> tuple[int, dict[str, Any]]:
    status, body = health(service)
    return status, cast(dict[str, Any], body["checks"]["archive"])


@pytest.fixture
async def broker(redis_url: str) -> AsyncIterator[RedisBroker]:
    async with make_broker(CommonSettings(_env_file=None, redis_url=redis_url), "test") as opened:
        yield opened


async def publish_until(broker: RedisBroker, stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        await broker.publish(exchange(n), stream=EXCHANGE_COMPLETED)
        n += 1
        await asyncio.sleep(0.002)


async def test_a_backup_taken_while_the_archiver_writes_restores_a_consistent_archive(
    redis_url: str, broker: RedisBroker, tmp_path: Path
) -> None:
    live = tmp_path / "live.db"
    copy = tmp_path / "backups" / "copy.db"
    archiver = start_archiver(redis_url, live, tmp_path, interval_s=0)
    stop = asyncio.Event()
    publishing = asyncio.create_task(publish_until(broker, stop))
    try:
        await eventually(lambda: len(rows(live)) >= 300, timeout=10)
        before = rows(live)
        # Small steps: the copy spans many of the archiver's commits, each of which
        # would restart a backup that did not read from one snapshot.
        made = await asyncio.wait_for(
            asyncio.to_thread(backup.backup, live, copy, pages=2, pause_s=0.005), timeout=10
        )
        assert len(rows(live)) > len(before), "no exchange was written during the backup"

        # The archiver has the file open, idle or not: a restore onto it is refused.
        refused(cli("restore", copy, "--force", database=live), "stop the archiver")
    finally:
        stop.set()
        await publishing
        archiver.stop()

    restored = tmp_path / "restored.db"
    line = result(cli("restore", copy, database=restored))
    assert line["restored"] == str(restored)
    assert line["captures"] == made.captures
    assert backup.check_file(restored).ok
    copied = rows(restored)
    assert len(copied) == made.captures >= len(before)
    # Every row committed before the backup began, and then the archive as it was
    # at one moment: a prefix of what the archiver went on to write, no gaps.
    assert copied[: len(before)] == before
    assert copied == rows(live)[: len(copied)]
    with closing(sqlite3.connect(restored)) as conn:
        (counted,) = conn.execute("SELECT total_captures FROM capture_stats").fetchone()
    assert counted == len(copied)


async def test_restore_checks_the_backup_and_replaces_an_archive_only_with_force(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source.db"
    await make_archive(source, "volcanoes", 50)
    good = tmp_path / "good.db"
    line = result(cli("backup", good, database=source))
    assert line == {
        "backup": str(good),
        "captures": 50,
        "bytes": good.stat().st_size,
        "seconds": line["seconds"],
    }
    # One self-contained file.
    assert wal_bytes(good) == -1
    refused(cli("backup", good, database=source), "--force")
    assert result(cli("backup", good, "--force", database=source))["captures"] == 50

    target = tmp_path / "target.db"
    await make_archive(target, "tides", 20)
    crash_leaving_wal(target)
    assert wal_bytes(target) > 0
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(16384))
    damaged = tmp_path / "damaged.db"
    result(cli("backup", damaged, database=source))
    damage_index(damaged)

    refused(cli("restore", good, database=target), "--force")
    refused(cli("restore", garbage, "--force", database=target), "failed the integrity checks")
    refused(cli("restore", damaged, "--force", database=target), "fts: database disk image")
    refused(cli("restore", tmp_path / "none.db", "--force", database=target), "no archive")
    # A damaged archive gives no backup.
    refused(cli("backup", tmp_path / "new.db", database=damaged), "failed the integrity checks")
    assert not (tmp_path / "new.db").exists()
    assert not (tmp_path / "new.db.partial").exists()
    assert [r[2] for r in rows(target)][-1] == "glaciers carve valleys"

    line = result(cli("restore", good, "--force", database=target))
    assert (line["restored"], line["source"], line["captures"]) == (str(target), str(good), 50)
    # The old file's WAL did not survive to be replayed onto the restored one.
    assert wal_bytes(target) == -1
    assert rows(target) == rows(source)
    async with Archive(target, read_connections=1) as archive:
        assert (await archive.stats())[0] == 50
        assert len(await archive.search("volcanoes", 100)) == 50
        assert await archive.search("tides", 10) == []
        assert await archive.search("glaciers", 10) == []
        await archive.integrity_check()


async def test_readiness_reports_the_checks_and_fails_when_the_archive_does(
    redis_url: str, tmp_path: Path
) -> None:
    db = tmp_path / "archive.db"
    await make_archive(db, "volcanoes", 20)
    archiver = start_archiver(redis_url, db, tmp_path, interval_s=0.3)
    try:
        await eventually(lambda: archive_check(archiver)[1]["state"] == "checked", timeout=5)
        status, check = archive_check(archiver)
        assert status == 200
        assert check["ok"] is True
        assert (check["integrity_check"], check["fts"]) == ("ok", "ok")
        assert "reason" not in check

        damage_index(db)
        await eventually(lambda: archive_check(archiver)[0] == 503, timeout=5)
        status, body = health(archiver)
        assert (body["status"], body["broker"]) == ("degraded", "ok")
        check = body["checks"]["archive"]
        assert check["ok"] is False
        assert check["integrity_check"] == "ok"
        assert check["reason"].startswith("fts: database disk image is malformed")
        assert health(archiver, "/health/ready")[0] == 503
        assert health(archiver, "/health/live")[0] == 200
    finally:
        archiver.stop()


async def test_an_archiver_started_on_a_damaged_archive_is_not_ready(
    redis_url: str, tmp_path: Path
) -> None:
    db = tmp_path / "archive.db"
    await make_archive(db, "volcanoes", 20)
    damage_index(db)
    # Unready from the first check on, so started once it serves at all.
    archiver = start_archiver(redis_url, db, tmp_path, interval_s=0, ready_path="/health/live")
    try:
        await eventually(lambda: archive_check(archiver)[0] == 503, timeout=5)
        check = archive_check(archiver)[1]
        assert check["ok"] is False
        assert "fts: " in check["reason"]
        assert health(archiver, "/health/live")[0] == 200
    finally:
        archiver.stop()
