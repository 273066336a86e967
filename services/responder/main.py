"""Responder worker: utterances in, companion replies and archived exchanges out."""

from services.responder.app import build
from services.responder.settings import ResponderSettings
from shared.logs import setup_logging

settings = ResponderSettings()
setup_logging(
    settings.log_level,
    service="responder",
    instance_id=settings.instance_id,
    fmt=settings.log_format,
)
broker, app = build(settings)
