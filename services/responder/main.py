"""Responder worker: utterances in, companion replies and archived exchanges out."""

from services.responder.app import build
from services.responder.settings import ResponderSettings
from shared.logs import setup_logging

settings = ResponderSettings()
setup_logging(settings.log_level)
broker, app = build(settings)
