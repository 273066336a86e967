"""Telephony: Twilio's webhooks for phone callers; publishes events, never calls a
model, never opens the database."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.telephony import errors, relay, webhooks
from services.telephony.calls import Calls
from services.telephony.settings import TelephonySettings, local_mode_warning, refusal
from services.telephony.signatures import Signatures
from services.telephony.twiml import TwiML
from shared import metrics, telemetry
from shared.asking import Conversations
from shared.backlog import Backlog
from shared.broker import make_broker, redis_client, wait_for_redis
from shared.logs import setup_logging
from shared.replies import ReplyRouter
from shared.tasks import cancel_all

SERVICE = "telephony"

log = logging.getLogger(__name__)


def create_app(settings: TelephonySettings) -> FastAPI:
    problem = refusal(settings)
    if problem is not None:
        # Before any connection: a service that must not run does not half start.
        raise SystemExit(f"telephony will not start: {problem}")
    warning = local_mode_warning(settings)
    if warning is not None:
        log.warning(warning)
    elif not settings.public_base_url:
        log.warning(
            "PUBLIC_BASE_URL is unset: signatures are checked against the URL this "
            "service sees, which behind a TLS-terminating proxy is not the one Twilio signed"
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await wait_for_redis(settings.redis_url, settings.redis_connect_timeout)
        broker = make_broker(settings, SERVICE)
        redis = redis_client(settings)
        replies = ReplyRouter(broker, redis, settings, SERVICE)
        backlog = Backlog(redis, settings.max_backlog)
        conversations = Conversations(
            replies,
            redis,
            reply_timeout=settings.reply_timeout,
            audio_ttl=settings.audio_ttl,
            owner_ttl=settings.session_owner_ttl_s,
            backlog=backlog,
        )
        app.state.redis = redis
        app.state.calls = calls = Calls(conversations, redis, settings)
        # Connected before the first call: the greeting waits for nothing.
        await broker.start()
        await replies.start()
        watching = asyncio.create_task(metrics.watch_groups(redis), name="group-metrics")
        gauging = asyncio.create_task(backlog.run(), name="backlog")
        try:
            yield
        finally:
            await cancel_all([gauging, watching], "telephony task")
            await calls.aclose()
            await replies.stop()
            await broker.stop()
            await redis.aclose()
            await asyncio.to_thread(telemetry.shutdown_tracing)

    app = FastAPI(
        title="Learning Voice Agent telephony", version=webhooks.VERSION, lifespan=lifespan
    )
    app.state.settings = settings
    app.state.signatures = Signatures(settings)
    app.state.twiml = TwiML(settings)
    errors.install(app)
    telemetry.instrument_app(app, settings, SERVICE)
    metrics.instrument_http(app)
    app.include_router(webhooks.router)
    app.include_router(relay.router)
    return app


settings = TelephonySettings()
setup_logging(
    settings.log_level,
    service="telephony",
    instance_id=settings.instance_id,
    fmt=settings.log_format,
)
app = create_app(settings)
