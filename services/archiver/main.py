"""Archiver worker: the single writer of the SQLite archive, and its only reader."""

from services.archiver.app import build
from services.archiver.settings import ArchiverSettings
from shared.logs import setup_logging

settings = ArchiverSettings()
setup_logging(
    settings.log_level,
    service="archiver",
    instance_id=settings.instance_id,
    fmt=settings.log_format,
)
broker, app = build(settings)
