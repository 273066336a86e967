"""Archiver settings: where the database lives and how it is read and written."""

from pathlib import Path

from pydantic import AliasChoices, Field, field_validator

from shared.settings import CommonSettings

# URL prefixes accepted for DATABASE_URL; SQLAlchemy-style driver suffixes are
# accepted too so that a v1 .env (or a copy-pasted SQLAlchemy URL) keeps working.
_SQLITE_URL_PREFIXES = ("sqlite+aiosqlite://", "sqlite://")


def database_path(url: str) -> Path:
    """The file a DATABASE_URL names.

    `sqlite:///relative/x.db` is relative to the working directory,
    `sqlite:////abs/x.db` is absolute, and anything without a scheme is a path.
    """
    for prefix in _SQLITE_URL_PREFIXES:
        if url.startswith(prefix):
            rest = url[len(prefix) :]
            if not rest.startswith("/"):
                # `sqlite://host/...` has no meaning for a file database.
                raise ValueError(f"DATABASE_URL must look like sqlite:///path, got {url!r}")
            # Drop the one slash that ends the (empty) authority part.
            path = rest[1:]
            break
    else:
        if "://" in url:
            raise ValueError(f"DATABASE_URL must be a sqlite URL or a path, got {url!r}")
        path = url
    if not path or path in {":memory:", "."}:
        # The archive is shared by several connections; an in-memory database
        # would give each of them its own empty database.
        raise ValueError(f"DATABASE_URL must name a file, got {url!r}")
    return Path(path)


class ArchiverSettings(CommonSettings):
    # v1 name and format; see `database_path` for the accepted forms.
    database_url: str = "sqlite:///./var/learning_captures.db"
    # Messages written per transaction: one commit (and one FTS5 segment flush)
    # per batch instead of per message is what makes ingest fast.
    archive_batch_size: int = 200
    # Search ranks by BM25 only the newest this-many matches (see Archive.search).
    search_candidate_limit: int = 2000
    # How long a connection waits for a lock held by another connection.
    sqlite_busy_timeout_ms: int = 5000
    # Read-only connections for search/history/stats, used in parallel with the
    # writer thanks to WAL.
    archive_read_connections: int = 4
    # Seconds between two runs of the integrity checks that /health reports (see
    # services.archiver.integrity); they read the whole file, so not per request.
    # 0: only the one after the archive opens.
    archive_integrity_interval_s: float = 3600.0
    # /health of this worker (FastStream ping of the broker).
    # One .env for every service (make run) needs a name per service;
    # HEALTH_PORT alone still works where the service has an environment of its own.
    health_port: int = Field(
        8102, validation_alias=AliasChoices("archiver_health_port", "health_port")
    )

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        database_path(value)
        return value

    @field_validator("archive_batch_size", "search_candidate_limit", "archive_read_connections")
    @classmethod
    def _check_positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @field_validator("archive_integrity_interval_s")
    @classmethod
    def _check_not_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must be 0 (off) or more")
        return value

    @property
    def database_path(self) -> Path:
        return database_path(self.database_url)
