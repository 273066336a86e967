"""Back the archive up while the archiver runs, and restore it with the archiver stopped.

    .venv/bin/python -m scripts.archive_backup backup var/backups/archive-2025-11-21.db
    .venv/bin/python -m scripts.archive_backup restore var/backups/archive-2025-11-21.db --force

`backup` copies the archive with SQLite's backup API: a consistent copy, as the
archive was when it began, taken while exchanges go on being written. The copy
must pass `PRAGMA integrity_check` and FTS5's check of the full-text index
against the captures, or it is not kept. `restore` checks the backup the same
way and copies it into the archive's file; it refuses while an archiver has the
file open. Each prints one JSON line. The archive is DATABASE_URL (from the
environment or .env), or --database.
"""

import argparse
import json
import sqlite3
import sys
from pathlib import Path

from services.archiver import backup
from services.archiver.settings import ArchiverSettings, database_path


def run(args: argparse.Namespace) -> int:
    try:
        archive = database_path(args.database or ArchiverSettings().database_url)
        if args.command == "backup":
            result = backup.backup(archive, args.path, force=args.force)
            line = {"backup": str(args.path), **result.model_dump()}
        else:
            result = backup.restore(args.path, archive, force=args.force)
            line = {"restored": str(archive), "source": str(args.path), **result.model_dump()}
    # ValueError: a DATABASE_URL that names no file; OSError, sqlite3.Error: a disk
    # that is full or not writable, and the like.
    except (backup.BackupError, ValueError, OSError, sqlite3.Error) as error:
        sys.stderr.write(f"{args.command}: {error}\n")
        return 1
    sys.stdout.write(json.dumps(line) + "\n")
    return 0


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="python -m scripts.archive_backup",
        description="Online backup of the archive, and its restore.",
    )
    commands = main.add_subparsers(dest="command", required=True)
    for name, path, text in (
        ("backup", "DEST", "copy the archive, live, to DEST and check the copy"),
        ("restore", "SRC", "check the backup SRC and make the archive a copy of it"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("path", metavar=path, type=Path, help="the backup file")
        sub.add_argument(
            "--database", help="the archive, as DATABASE_URL names it (default: DATABASE_URL)"
        )
        sub.add_argument(
            "--force",
            action="store_true",
            help="overwrite DEST" if name == "backup" else "replace an archive that exists",
        )
    return main


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(parser().parse_args(argv)))


if __name__ == "__main__":
    main()
