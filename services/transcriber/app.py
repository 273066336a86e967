"""Wiring of the transcriber worker: audio in, the learner's words out."""

from typing import Literal

from faststream.asgi import AsgiFastStream
from faststream.redis import RedisBroker, StreamSub
from redis.asyncio import Redis

from services.transcriber.service import Transcriber
from services.transcriber.settings import TranscriberSettings
from services.transcriber.stt import create_stt
from shared.broker import ensure_groups, make_broker, redis_client, wait_for_redis
from shared.delivery import Reclaimer
from shared.events import AudioReceived, UtteranceReceived
from shared.streams import AUDIO_RECEIVED, UTTERANCE_RECEIVED, Groups
from shared.worker import BackgroundTasks, worker_app

SERVICE = "transcriber"


class _Runtime:
    """What the handlers use, created at start-up rather than at import."""

    redis: Redis
    transcriber: Transcriber


def build(settings: TranscriberSettings) -> tuple[RedisBroker, AsgiFastStream]:
    broker = make_broker(settings, SERVICE)
    stt = create_stt(settings)
    rt = _Runtime()
    background = BackgroundTasks()

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
        outcome = await rt.transcriber.hear(event)
        if isinstance(outcome, UtteranceReceived):
            await broker.publish(outcome, stream=UTTERANCE_RECEIVED, maxlen=settings.stream_maxlen)
        elif event.reply_to:
            await broker.publish(
                outcome, stream=event.reply_to, maxlen=settings.reply_stream_maxlen
            )
        await rt.transcriber.forget(event)

    async def start() -> None:
        await wait_for_redis(settings.redis_url, settings.redis_connect_timeout)
        rt.redis = redis_client(settings)
        await ensure_groups(rt.redis, Groups.TRANSCRIBER, (AUDIO_RECEIVED,))
        rt.transcriber = Transcriber(rt.redis, stt, settings)
        # The model loads and warms before the first clip is read: never per message.
        await stt.start()

    async def started() -> None:
        reclaimer = Reclaimer(rt.redis, settings, stream=AUDIO_RECEIVED, group=Groups.TRANSCRIBER)
        background.start("reclaim-audio", reclaimer.run)

    async def stop() -> None:
        await background.stop()
        await stt.aclose()
        await rt.redis.aclose()

    app = worker_app(broker, on_startup=[start], after_startup=[started], on_shutdown=[stop])
    return broker, app
