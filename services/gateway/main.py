"""Gateway: REST and WebSocket for learners; publishes events, never calls a model."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from services.gateway import api, errors, frontend, phone_link, ws
from services.gateway.auth import Authenticator
from services.gateway.backend import Backend
from services.gateway.frontend import Frontend
from services.gateway.intake import AudioBudget
from services.gateway.limits import BodySizeLimit
from services.gateway.memory import ConnectionGauge
from services.gateway.redaction import redact_tickets
from services.gateway.security import SecurityHeaders
from services.gateway.settings import GatewaySettings, open_mode_warning, secret_refusal
from shared import metrics, telemetry
from shared.backlog import Backlog
from shared.broker import make_broker, redis_client, wait_for_redis
from shared.logs import setup_logging
from shared.replies import ReplyRouter
from shared.tasks import cancel_all

SERVICE = "gateway"

log = logging.getLogger(__name__)


def create_app(settings: GatewaySettings) -> FastAPI:
    if settings.auth_mode == "token":
        problem = secret_refusal(settings)
        if problem is not None:
            # Before any connection: a gateway that cannot check tokens does not half start.
            raise SystemExit(f"gateway will not start: AUTH_MODE=token, but {problem}")
    warning = open_mode_warning(settings)
    if warning is not None:
        log.warning(warning)
    else:
        log.info("AUTH_MODE=token: /api/* and /ws/* need a JWT, an API key or a ticket")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await wait_for_redis(settings.redis_url, settings.redis_connect_timeout)
        broker = make_broker(settings, SERVICE)
        redis = redis_client(settings)
        replies = ReplyRouter(broker, redis, settings, SERVICE)
        app.state.settings, app.state.redis = settings, redis
        backlog = Backlog(redis, settings.max_backlog)
        app.state.backend = Backend(replies, redis, settings, backlog)
        app.state.authenticator = Authenticator(settings, redis)
        app.state.connections = ConnectionGauge()
        app.state.audio_budget = AudioBudget(settings.max_audio_bytes_held)
        await broker.start()
        await replies.start()
        watching = asyncio.create_task(metrics.watch_groups(redis), name="group-metrics")
        gauging = asyncio.create_task(backlog.run(), name="backlog")
        try:
            yield
        finally:
            await cancel_all([gauging, watching], "gateway task")
            await replies.stop()
            await broker.stop()
            await redis.aclose()
            await asyncio.to_thread(telemetry.shutdown_tracing)
            await app.state.connections.aclose()

    app = FastAPI(title="Learning Voice Agent gateway", version=api.VERSION, lifespan=lifespan)
    # The page reads the limits it should hold the learner to from these.
    limits = {
        "__MAX_TEXT_CHARS__": str(settings.max_text_chars),
        "__MAX_AUDIO_SECONDS__": f"{settings.max_audio_duration:g}",
    }
    app.state.frontend = Frontend.load(settings.frontend_dir, limits)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    app.add_middleware(
        CORSMiddleware, allow_origins=origins, allow_methods=["*"], allow_headers=["*"]
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # Added last, so outermost: refusals (413) and CORS preflights carry the headers too.
    app.add_middleware(SecurityHeaders)
    errors.install(app)
    telemetry.instrument_app(app, settings, SERVICE)
    metrics.instrument_http(app)
    app.include_router(api.router)
    app.include_router(phone_link.router)
    app.include_router(ws.router)
    app.include_router(frontend.router)
    return app


settings = GatewaySettings()
setup_logging(
    settings.log_level, service="gateway", instance_id=settings.instance_id, fmt=settings.log_format
)
redact_tickets()
app = create_app(settings)
