from services.archiver.main import app, settings
from shared.worker import serve

serve(app, settings, settings.health_port)
