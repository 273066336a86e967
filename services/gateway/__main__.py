import uvicorn

from services.gateway.main import app, settings
from services.gateway.settings import bind_refusal

problem = bind_refusal(settings)
if problem is not None:
    # Checked where the address is bound: an app built in a test's process binds none.
    raise SystemExit(f"gateway will not start: {problem}")

uvicorn.run(
    app,
    host=settings.host,
    port=settings.port,
    log_config=None,
    ws_max_size=settings.max_body_bytes,
    # Replies are ~150-byte JSON and clips are already compressed audio: per-message
    # deflate would cost ~40 KiB of memory per connection and gain nothing.
    ws_per_message_deflate=False,
)
