import uvicorn

from services.gateway.main import app, settings

uvicorn.run(
    app,
    host=settings.host,
    port=settings.port,
    log_config=None,
    ws_max_size=settings.max_body_bytes,
)
