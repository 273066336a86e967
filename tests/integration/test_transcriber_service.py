"""The transcriber's decisions on a real Redis: a clip whose asker gave up is not
transcribed, and a transcript keeps its asker's deadline; and its `stt` span."""

from collections.abc import Iterator
from datetime import timedelta

import pytest
from opentelemetry.trace import StatusCode
from redis.asyncio import Redis

from services.transcriber.audio import Clip, load_clip
from services.transcriber.service import Transcriber
from services.transcriber.settings import TranscriberSettings
from services.transcriber.stt.base import STTUnavailableError, current_hearing
from services.transcriber.stt.openai_whisper import OpenAIWhisperSTT
from shared.events import AudioReceived, ErrorReply, UtteranceReceived, utcnow
from shared.streams import Keys
from tests.support.stack import FIXTURES
from tests.support.tracing import RecordedSpans, words_on
from tests.wire.openai_server import OpenAIWireServer


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


# -- the stt span ------------------------------------------------------------------------


class WhisperLikeSTT(CountingSTT):
    """Tells what a Whisper model would of the clip besides the words."""

    name = "whisper-like"
    model = "tiny.en"

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail

    async def transcribe(self, clip: Clip) -> str:
        hearing = current_hearing()
        if hearing is not None:
            hearing.language = "en"
            hearing.no_speech_prob = 0.0123456
            hearing.segments = 1
        if self.fail:
            raise STTUnavailableError("scripted outage")
        return await super().transcribe(clip)


async def test_the_stt_span_says_what_was_heard_and_by_whom(
    redis: Redis, spans: RecordedSpans
) -> None:
    transcriber = Transcriber(redis, WhisperLikeSTT(), TranscriberSettings(_env_file=None))
    assert isinstance(await transcriber.hear(await clip_event(redis)), UtteranceReceived)
    stt = spans.one("stt")
    assert stt.status.status_code is StatusCode.UNSET
    clip = load_clip(
        (FIXTURES / "sentence1.ogg").read_bytes(), max_bytes=1 << 24, max_duration_s=60
    )
    assert dict(stt.attributes or {}) == {
        "lva.audio.duration_s": round(clip.duration_s, 3),
        "session.id": "s1",
        "lva.stt.provider": "whisper-like",
        "lva.stt.model": "tiny.en",
        "lva.audio.format": "ogg",
        "lva.stt.language": "en",
        "lva.stt.no_speech_prob": 0.0123,
        "lva.stt.segments": 1,
    }


async def test_the_transcript_goes_on_the_span_only_when_the_operator_opts_in(
    redis: Redis, spans: RecordedSpans
) -> None:
    transcriber = Transcriber(redis, CountingSTT(), TranscriberSettings(_env_file=None))
    await transcriber.hear(await clip_event(redis))
    assert not any("tides" in str(v) for v in words_on(spans.one("stt")))
    spans.clear()
    spans.capture_content()
    await transcriber.hear(await clip_event(redis))
    stt = spans.one("stt")
    assert stt.attributes and stt.attributes["lva.stt.transcript"] == "The tides follow the moon."


async def test_a_recogniser_failure_marks_the_stt_span(redis: Redis, spans: RecordedSpans) -> None:
    stt = WhisperLikeSTT(fail=True)
    transcriber = Transcriber(redis, stt, TranscriberSettings(_env_file=None))
    assert isinstance(await transcriber.hear(await clip_event(redis)), ErrorReply)
    span = spans.one("stt")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes and span.attributes["error.type"] == "STTUnavailableError"


@pytest.fixture(scope="module")
def whisper_server() -> Iterator[OpenAIWireServer]:
    with OpenAIWireServer() as server:
        yield server


async def test_the_hosted_recogniser_tells_its_language(
    redis: Redis, spans: RecordedSpans, whisper_server: OpenAIWireServer
) -> None:
    whisper_server.reset()
    settings = TranscriberSettings(
        _env_file=None,
        openai_api_key=None,
        openai_base_url=whisper_server.base_url,
        whisper_model="whisper-1",
        stt_max_retries=0,
    )
    stt = OpenAIWhisperSTT(settings)
    await stt.start()
    try:
        await Transcriber(redis, stt, settings).hear(await clip_event(redis))
    finally:
        await stt.aclose()
    attributes = dict(spans.one("stt").attributes or {})
    assert attributes["lva.stt.provider"] == "openai"
    assert attributes["lva.stt.model"] == "whisper-1"
    assert attributes["lva.stt.language"] == "en"
    # Only `verbose_json` has Whisper's estimate, and it is not asked for.
    assert "lva.stt.no_speech_prob" not in attributes
