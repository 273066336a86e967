from services.transcriber.main import app, settings
from shared.worker import serve

serve(app, settings, settings.health_port)
