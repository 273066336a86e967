"""Wiring of the responder worker: subscriptions, start-up and shutdown."""

from typing import Literal

from faststream.asgi import AsgiFastStream
from faststream.redis import RedisBroker, StreamSub
from pydantic import BaseModel
from redis.asyncio import Redis

from services.responder.context import ContextStore
from services.responder.providers import create_provider
from services.responder.service import Responder
from services.responder.settings import ResponderSettings
from shared.broker import ensure_groups, make_broker, redis_client, wait_for_redis
from shared.delivery import Reclaimer
from shared.events import SessionEndRequested, UtteranceReceived
from shared.streams import EXCHANGE_COMPLETED, SESSION_END_REQUESTED, UTTERANCE_RECEIVED, Groups
from shared.worker import BackgroundTasks, worker_app

SERVICE = "responder"
CONSUMED = (UTTERANCE_RECEIVED, SESSION_END_REQUESTED)


class _Runtime:
    """What the handlers use, created at start-up rather than at import."""

    redis: Redis
    responder: Responder


def build(settings: ResponderSettings) -> tuple[RedisBroker, AsgiFastStream]:
    broker = make_broker(settings, SERVICE)
    llm = create_provider(settings)
    rt = _Runtime()
    background = BackgroundTasks()

    def group(stream: str) -> "StreamSub[Literal[False]]":
        # A replica claims at most what it works on at once, so a backlog is shared
        # among replicas instead of hoarded by the one that read first.
        return StreamSub(
            stream,
            group=Groups.RESPONDER,
            consumer=settings.instance_id,
            max_records=settings.responder_concurrency,
        )

    async def reply(message: BaseModel, reply_to: str | None) -> None:
        if reply_to:
            await broker.publish(message, stream=reply_to, maxlen=settings.reply_stream_maxlen)

    @broker.subscriber(stream=group(UTTERANCE_RECEIVED), max_workers=settings.responder_concurrency)
    async def on_utterance(event: UtteranceReceived) -> None:
        answer, exchange = await rt.responder.answer(event)
        await reply(answer, event.reply_to)
        await broker.publish(exchange, stream=EXCHANGE_COMPLETED, maxlen=settings.stream_maxlen)

    @broker.subscriber(stream=group(SESSION_END_REQUESTED))
    async def on_session_end(event: SessionEndRequested) -> None:
        await reply(await rt.responder.end(event), event.reply_to)

    async def start() -> None:
        await wait_for_redis(settings.redis_url, settings.redis_connect_timeout)
        rt.redis = redis_client(settings)
        await ensure_groups(rt.redis, Groups.RESPONDER, CONSUMED)
        store = ContextStore(
            rt.redis, max_exchanges=settings.max_context_exchanges, ttl_s=settings.redis_ttl
        )
        rt.responder = Responder(store, llm, settings)
        # The model loads before the first message is read: never per message.
        await llm.start()

    async def started() -> None:
        for stream in CONSUMED:
            reclaimer = Reclaimer(rt.redis, settings, stream=stream, group=Groups.RESPONDER)
            background.start(f"reclaim-{stream}", reclaimer.run)

    async def stop() -> None:
        await background.stop()
        await llm.aclose()
        await rt.redis.aclose()

    app = worker_app(broker, on_startup=[start], after_startup=[started], on_shutdown=[stop])
    return broker, app
