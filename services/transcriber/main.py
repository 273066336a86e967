"""Transcriber worker: a learner's clip in, their words out to the responder."""

from services.transcriber.app import build
from services.transcriber.settings import TranscriberSettings
from shared.logs import setup_logging

settings = TranscriberSettings()
setup_logging(
    settings.log_level,
    service="transcriber",
    instance_id=settings.instance_id,
    fmt=settings.log_format,
)
broker, app = build(settings)
