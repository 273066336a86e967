"""Online backup and restore of the archive, with SQLite's backup API.

A backup is taken while the archiver writes. The copy is made from one read
transaction held from the first page to the last: in WAL mode a reader does
not block the writer (its commits go on into the WAL), and the copy is the
archive as it was when that transaction began. Without it, the backup API would
start over at the next step after each commit of the archiver's, and under a
steady stream of exchanges never end. The steps, and a short pause between
them, share the disk with the writer.

A restore writes the pages of a checked copy into the archive's own file through
SQLite, which first takes the file over: that fails while any other connection
has it open (the archiver keeps its connections open, busy or not), so a running
archiver is refused rather than written under. Taking it over also checkpoints
and removes the old -wal and -shm files, which must not outlive the file they
belong to. The copy is one transaction of the target's: a restore cut short
leaves the old archive, rolled back from its journal when the file is next opened.
"""

import logging
import os
import sqlite3
import time
from pathlib import Path

from pydantic import BaseModel

from services.archiver import integrity

log = logging.getLogger(__name__)

# Pages copied per step (4 MiB at SQLite's default page size of 4 KiB) and the
# pause after each.
STEP_PAGES = 1024
STEP_PAUSE_S = 0.005
# How long a restore waits for the target to be free before saying it is in use,
# and how long the other connections wait for a lock (the archiver's default).
CLAIM_TIMEOUT_S = 0.5
BUSY_TIMEOUT_S = 5.0
_SIDECARS = ("-wal", "-shm", "-journal")


class BackupError(Exception):
    """A backup or restore that was refused or failed; the message says why."""


class BackupResult(BaseModel):
    """The copy made: its captures, its size and how long it took."""

    captures: int
    bytes: int
    seconds: float


def _open_existing(path: Path, *, query_only: bool = False) -> sqlite3.Connection:
    """A connection to `path`, which must exist (a plain connect would create it)."""
    if not path.is_file():
        raise BackupError(f"no archive at {path}")
    conn = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=rw",
        uri=True,
        isolation_level=None,
        timeout=BUSY_TIMEOUT_S,
    )
    if query_only:
        conn.execute("PRAGMA query_only = ON")
    return conn


def _remove_sidecars(path: Path) -> None:
    """The journal files SQLite keeps beside `path`."""
    for suffix in _SIDECARS:
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    _remove_sidecars(path)


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))


def _copy(source: sqlite3.Connection, dest: sqlite3.Connection, pages: int, pause_s: float) -> int:
    """Copy `source` into `dest` from one snapshot; return its number of captures."""

    def pause(status: int, remaining: int, total: int) -> None:
        if remaining:
            time.sleep(pause_s)

    # BEGIN alone takes no snapshot; the first read does, and every step of the
    # backup reads from it (see the module's docstring).
    source.execute("BEGIN")
    try:
        try:
            (captures,) = source.execute("SELECT count(*) FROM captures").fetchone()
        except sqlite3.DatabaseError as error:
            raise BackupError(f"not an archive: {error}") from error
        source.backup(dest, pages=pages, progress=pause)
    finally:
        source.execute("COMMIT")
    return int(captures)


def check_file(path: Path) -> integrity.IntegrityReport:
    """Both integrity checks on the database at `path` (opened to write: FTS5's
    check is an INSERT, though it changes nothing)."""
    conn = _open_existing(path)
    try:
        return integrity.check(conn)
    finally:
        conn.close()


def _claim(target: Path, *, force: bool) -> sqlite3.Connection:
    """A connection that holds `target` alone until it is closed.

    Leaving WAL mode needs every other connection gone, so it is the test of an
    archiver running on the file: BEGIN IMMEDIATE would pass between two of its
    batches.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(target, isolation_level=None, timeout=CLAIM_TIMEOUT_S)
    try:
        try:
            (mode,) = conn.execute("PRAGMA journal_mode = DELETE").fetchone()
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise
            raise BackupError(f"{target} is in use ({error}): stop the archiver first") from error
        except sqlite3.DatabaseError as error:
            # Not a database at all: nothing can have it open as one.
            if not force:
                raise BackupError(f"{target} is no database ({error})") from error
            conn.close()
            log.warning("replacing %s, which is no database: %s", target, error)
            _remove(target)
            return _claim(target, force=False)
        if str(mode).lower() != "delete":
            raise BackupError(f"{target} is in use: stop the archiver first")
        # Held from the first write on, to the end: an archiver started meanwhile
        # waits, and then fails, rather than reading a half-restored file.
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("COMMIT")
    except BaseException:
        conn.close()
        raise
    return conn


def backup(
    source: Path,
    dest: Path,
    *,
    force: bool = False,
    pages: int = STEP_PAGES,
    pause_s: float = STEP_PAUSE_S,
) -> BackupResult:
    """Copy the archive at `source`, live, to `dest`, and check the copy.

    The copy is written beside `dest` and takes its place only once it has passed
    both integrity checks: a `dest` that exists is a checked backup. It is left in
    rollback-journal mode, one file to keep; the archiver turns WAL on when it
    opens it.
    """
    started = time.monotonic()
    if _same_file(source, dest):
        raise BackupError(f"{dest} is the archive itself")
    if dest.exists() and not force:
        raise BackupError(f"{dest} exists: pass --force to overwrite it")
    partial = dest.with_name(dest.name + ".partial")
    _remove(partial)
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = _open_existing(source, query_only=True)
    try:
        copy = sqlite3.connect(partial, isolation_level=None)
        try:
            captures = _copy(src, copy, pages, pause_s)
            copy.execute("PRAGMA journal_mode = DELETE")
            found = integrity.check(copy)
        finally:
            copy.close()
    except BaseException:
        _remove(partial)
        raise
    finally:
        src.close()
    if not found.ok:
        _remove(partial)
        # A copy has the archive's pages, so its damage is the archive's.
        raise BackupError(f"the archive at {source} failed the integrity checks: {found.reason}")
    if dest.exists():
        # Whoever may have it open must let go first, and its journal files must
        # not meet the new file.
        _claim(dest, force=True).close()
        _remove_sidecars(dest)
    os.replace(partial, dest)
    return BackupResult(
        captures=captures, bytes=dest.stat().st_size, seconds=round(time.monotonic() - started, 3)
    )


def restore(
    source: Path,
    target: Path,
    *,
    force: bool = False,
    pages: int = STEP_PAGES,
    pause_s: float = STEP_PAUSE_S,
) -> BackupResult:
    """Make the archive at `target` a copy of the backup `source`, which must pass
    both integrity checks. The archiver must be stopped; an archive in use is
    refused, and one that exists needs `force`."""
    started = time.monotonic()
    if _same_file(source, target):
        raise BackupError(f"{source} is the archive itself")
    found = check_file(source)
    if not found.ok:
        raise BackupError(f"{source} failed the integrity checks, not restored: {found.reason}")
    if target.exists() and not force:
        raise BackupError(f"{target} exists: pass --force to replace it (archiver stopped)")
    dest = _claim(target, force=force)
    try:
        src = _open_existing(source, query_only=True)
        try:
            captures = _copy(src, dest, pages, pause_s)
        finally:
            src.close()
    finally:
        dest.close()
    return BackupResult(
        captures=captures, bytes=target.stat().st_size, seconds=round(time.monotonic() - started, 3)
    )
