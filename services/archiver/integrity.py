"""The archive's two integrity checks, and the archiver's cached result of them.

`PRAGMA integrity_check` finds damage to the file (pages, b-trees, indexes);
FTS5's content check finds a full-text index that disagrees with `captures`
(see Archive.integrity_check), which the first does not look at. Both read the
whole database, seconds per GB: the archiver runs them after it opens the
archive and then every ARCHIVE_INTEGRITY_INTERVAL_S, and /health shows the last
result rather than checking per request.
"""

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from pydantic import BaseModel

from shared.tasks import cancel_all

log = logging.getLogger(__name__)

OK = "ok"
# The number of problems PRAGMA integrity_check lists before it stops: enough to
# say what is wrong, and a /health body stays small.
MAX_PROBLEMS = 10
INTEGRITY_CHECK = f"PRAGMA integrity_check({MAX_PROBLEMS})"
# Rank 1: compare the index with the content, not only with itself.
FTS_CHECK = "INSERT INTO captures_fts(captures_fts, rank) VALUES ('integrity-check', 1)"


class IntegrityReport(BaseModel):
    """What the checks found: "ok", or what is wrong, for each."""

    ok: bool
    integrity_check: str
    fts: str
    seconds: float
    checked_at: datetime

    @property
    def reason(self) -> str | None:
        """Why the archive failed the checks; None if it passed."""
        failed = [
            f"{name}: {found}"
            for name, found in (("integrity_check", self.integrity_check), ("fts", self.fts))
            if found != OK
        ]
        return "; ".join(failed) or None


def integrity_result(rows: list[str]) -> str:
    """ "ok", or the problems PRAGMA integrity_check listed, in one line."""
    return OK if rows == [OK] else "; ".join(rows) or "no answer"


def report(integrity_check: str, fts: str, started: float) -> IntegrityReport:
    """The report of checks begun at time.monotonic() `started`."""
    return IntegrityReport(
        ok=integrity_check == OK and fts == OK,
        integrity_check=integrity_check,
        fts=fts,
        seconds=round(time.monotonic() - started, 3),
        checked_at=datetime.now(UTC),
    )


def check(conn: sqlite3.Connection) -> IntegrityReport:
    """Both checks on `conn`, which must be able to write: FTS5 takes its check
    as an INSERT (it changes nothing)."""
    started = time.monotonic()
    try:
        integrity = integrity_result([str(row[0]) for row in conn.execute(INTEGRITY_CHECK)])
    except sqlite3.DatabaseError as error:
        # A file too damaged (or no database at all) fails the check itself.
        integrity = str(error)
    try:
        conn.execute(FTS_CHECK)
        fts = OK
    except sqlite3.DatabaseError as error:
        fts = str(error)
    return report(integrity, fts, started)


Check = Callable[[], Awaitable[IntegrityReport]]


class IntegrityMonitor:
    """Runs `check` at start and then every `interval_s` (0: only at start), and
    keeps the last report for /health."""

    def __init__(self, check: Check, interval_s: float) -> None:
        self._check = check
        self._interval_s = interval_s
        self.last: IntegrityReport | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="archive-integrity")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_all([self._task], "integrity check")
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.check_now()
            except Exception:
                # Not a finding about the archive (those are reports): the last
                # report stands, and the next check tries again.
                log.exception("the archive's integrity check could not run")
            if self._interval_s <= 0:
                return
            await asyncio.sleep(self._interval_s)

    async def check_now(self) -> IntegrityReport:
        self.last = await self._check()
        if self.last.ok:
            log.info("the archive passed its integrity checks in %.1f s", self.last.seconds)
        else:
            log.error("the archive failed its integrity checks: %s", self.last.reason)
        return self.last

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """For Worker.add_check: the last report; ready until a check has failed."""
        if self.last is None:
            # Not known to be damaged: holding back readiness for the first check
            # (seconds per GB) would hold back the archiver's start-up probe.
            return True, {"state": "pending"}
        detail: dict[str, object] = {
            "state": "checked",
            **self.last.model_dump(mode="json", exclude={"ok"}),
        }
        if not self.last.ok:
            detail["reason"] = self.last.reason
        return self.last.ok, detail
