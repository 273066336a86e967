"""The transcriber's decisions on a real Redis: a clip whose asker gave up is not
transcribed, and a transcript keeps its asker's deadline."""

from datetime import timedelta

from redis.asyncio import Redis

from services.transcriber.audio import Clip
from services.transcriber.service import Transcriber
from services.transcriber.settings import TranscriberSettings
from shared.events import AudioReceived, UtteranceReceived, utcnow
from shared.streams import Keys
from tests.support.stack import FIXTURES


class CountingSTT:
    name = "counting"
    model = "counting"

    def __init__(self) -> None:
        self.calls = 0

    async def start(self) -> None:
        return None

    async def transcribe(self, clip: Clip) -> str:
        self.calls += 1
        return "The tides follow the moon."

    async def aclose(self) -> None:
        return None


async def clip_event(redis: Redis, **fields: object) -> AudioReceived:
    event = AudioReceived(
        session_id="s1", source="websocket", audio_key="", size_bytes=0, reply_to="r", **fields
    )
    event = event.model_copy(update={"audio_key": Keys.audio(event.event_id)})
    await redis.set(event.audio_key, (FIXTURES / "sentence1.ogg").read_bytes(), ex=60)
    return event


async def test_a_clip_past_its_deadline_is_not_transcribed(redis: Redis) -> None:
    stt = CountingSTT()
    transcriber = Transcriber(redis, stt, TranscriberSettings(_env_file=None))
    event = await clip_event(redis, deadline=utcnow() - timedelta(seconds=1))
    assert await transcriber.hear(event) is None
    assert stt.calls == 0
    await transcriber.forget(event)
    assert not await redis.exists(event.audio_key)


async def test_a_transcript_keeps_the_askers_deadline(redis: Redis) -> None:
    stt = CountingSTT()
    transcriber = Transcriber(redis, stt, TranscriberSettings(_env_file=None))
    deadline = utcnow() + timedelta(seconds=30)
    event = await clip_event(redis, deadline=deadline)
    outcome = await transcriber.hear(event)
    assert isinstance(outcome, UtteranceReceived)
    assert outcome.text == "The tides follow the moon."
    assert outcome.deadline == deadline and outcome.event_id == event.event_id
    assert stt.calls == 1
