import uvicorn

from services.telephony.main import app, settings

uvicorn.run(app, host=settings.host, port=settings.telephony_port, log_config=None)
