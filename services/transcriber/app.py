"""Wiring of the transcriber worker: audio in, the learner's words out."""

from typing import Literal

from faststream.asgi import AsgiFastStream
from faststream.redis import RedisBroker, StreamSub

from services.transcriber.service import Transcriber
from services.transcriber.settings import TranscriberSettings
from services.transcriber.stt import create_stt
from services.transcriber.stt.guarded import guarded
from shared import telemetry
from shared.events import AudioReceived, UtteranceReceived
from shared.replies import ReplySender
from shared.streams import AUDIO_RECEIVED, UTTERANCE_RECEIVED, Groups
from shared.worker import Worker

SERVICE = "transcriber"


class _Runtime:
    """What the handlers use, created at start-up rather than at import."""

    transcriber: Transcriber
    replies: ReplySender


def build(settings: TranscriberSettings) -> tuple[RedisBroker, AsgiFastStream]:
    worker = Worker(settings, SERVICE)
    broker = worker.broker
    stt = guarded(create_stt(settings), settings)
    rt = _Runtime()

    # A replica claims at most what it works on at once, so a backlog of clips is
    # shared among replicas instead of hoarded by the one that read first.
    stream: StreamSub[Literal[False]] = StreamSub(
        AUDIO_RECEIVED,
        group=Groups.TRANSCRIBER,
        consumer=settings.instance_id,
        max_records=settings.transcriber_concurrency,
    )

    @broker.subscriber(stream=stream, max_workers=settings.transcriber_concurrency)
    async def on_audio(event: AudioReceived) -> None:
        telemetry.bind_session(event.session_id)
        outcome = await rt.transcriber.hear(event)
        if isinstance(outcome, UtteranceReceived):
            # The learner sees what was heard while the companion thinks.
            transcript = rt.transcriber.transcript(event, outcome)
            if transcript is not None:
                await rt.replies.send(transcript, event.reply_to)
            await worker.publish(outcome, UTTERANCE_RECEIVED)
        elif outcome is not None:
            await rt.replies.send(outcome, event.reply_to)
        await rt.transcriber.forget(event)

    async def start() -> None:
        rt.transcriber = Transcriber(worker.redis, stt, settings)
        rt.replies = ReplySender(worker.redis, settings)
        # The model loads and warms before the first clip is read: never per message.
        await stt.start()

    async def stop() -> None:
        await stt.aclose()

    return broker, worker.app(on_startup=[start], after_shutdown=[stop])
