"""Wiring of the responder worker: subscriptions, start-up and shutdown."""

from typing import Literal

from faststream.asgi import AsgiFastStream
from faststream.redis import RedisBroker, StreamSub

from services.responder.context import ContextStore
from services.responder.providers import create_provider
from services.responder.providers.guarded import guarded
from services.responder.service import PieceSink, Responder
from services.responder.settings import ResponderSettings
from shared import telemetry
from shared.cancel import CancelWatch
from shared.events import DeltaReply, SessionEndRequested, UtteranceReceived
from shared.replies import ReplySender, Sent
from shared.streams import EXCHANGE_COMPLETED, SESSION_END_REQUESTED, UTTERANCE_RECEIVED, Groups
from shared.worker import Worker

SERVICE = "responder"


class _Runtime:
    """What the handlers use, created at start-up rather than at import."""

    responder: Responder
    replies: ReplySender


def build(settings: ResponderSettings) -> tuple[RedisBroker, AsgiFastStream]:
    worker = Worker(settings, SERVICE)
    broker = worker.broker
    llm = guarded(create_provider(settings), settings)
    rt = _Runtime()

    def group(stream: str) -> "StreamSub[Literal[False]]":
        # A replica claims at most what it works on at once, so a backlog is shared
        # among replicas instead of hoarded by the one that read first.
        return StreamSub(
            stream,
            group=Groups.RESPONDER,
            consumer=settings.instance_id,
            max_records=settings.responder_concurrency,
        )

    def pieces_for(event: UtteranceReceived) -> PieceSink | None:
        """Where the reply's pieces go, for an asker that shows them as they come."""
        if not (event.stream and event.reply_to):
            return None

        async def send(text: str) -> bool:
            piece = DeltaReply(in_reply_to=event.event_id, session_id=event.session_id, text=text)
            sent = await rt.replies.deliver(piece, event.reply_to, unless_cancelled=event.event_id)
            return sent is not Sent.CANCELLED

        return send

    @broker.subscriber(stream=group(UTTERANCE_RECEIVED), max_workers=settings.responder_concurrency)
    async def on_utterance(event: UtteranceReceived) -> None:
        telemetry.bind_session(event.session_id)
        answer, exchange = await rt.responder.answer(event, pieces_for(event))
        if answer is not None:
            await rt.replies.send(answer, event.reply_to)
        await worker.publish(exchange, EXCHANGE_COMPLETED)

    @broker.subscriber(stream=group(SESSION_END_REQUESTED))
    async def on_session_end(event: SessionEndRequested) -> None:
        telemetry.bind_session(event.session_id)
        # Ended even when the asker stopped waiting: the learner asked for it.
        await rt.replies.send(await rt.responder.end(event), event.reply_to)

    async def start() -> None:
        store = ContextStore(
            worker.redis, max_exchanges=settings.max_context_exchanges, ttl_s=settings.redis_ttl
        )
        cancels = CancelWatch(worker.redis)
        worker.run_in_background("cancels", cancels.run)
        rt.responder = Responder(store, llm, settings, cancels)
        rt.replies = ReplySender(worker.redis, settings)
        # The model loads before the first message is read: never per message.
        await llm.start()

    async def stop() -> None:
        await llm.aclose()

    return broker, worker.app(on_startup=[start], after_shutdown=[stop])
