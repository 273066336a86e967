"""Speech-to-text: the hosted strategy with the real `openai` SDK against a local server
speaking OpenAI's transcription wire format, and the rule that picks a strategy."""

import sys
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, get_args

import numpy as np
import openai
import pytest
from fastapi.responses import JSONResponse, PlainTextResponse

from services.transcriber.audio import MIME_TYPES, SAMPLE_RATE, AudioFormat, Clip
from services.transcriber.settings import TranscriberSettings
from services.transcriber.stt import (
    SpeechToText,
    STTError,
    STTRateLimitedError,
    STTUnavailableError,
    choose_stt_name,
    create_stt,
)
from services.transcriber.stt.local_whisper import LocalWhisperSTT
from services.transcriber.stt.openai_whisper import PLACEHOLDER_API_KEY, OpenAIWhisperSTT
from tests.wire.openai_server import OpenAIWireServer, parse_multipart

TRANSCRIPT = "How far away is the moon from the earth?"
API_KEY = "sk-test-key"
# Bytes that a careless multipart encoder or parser would mangle: CR LF, a line that
# looks like a boundary, NUL, and every byte value.
AUDIO_BYTES = b"RIFF\r\n--\r\n\x00" + bytes(range(256)) * 40 + b"\r\n"


def settings(**overrides: Any) -> TranscriberSettings:
    """Settings from these values alone: every speech-to-text field is given, so neither
    the process environment nor a .env file can change the outcome."""
    values: dict[str, Any] = {
        "stt_provider": None,
        "openai_api_key": None,
        "openai_base_url": None,
        "whisper_model": "whisper-1",
        "stt_timeout": 5.0,
        "stt_max_retries": 0,
        "whisper_local_model": None,
        "whisper_threads": None,
        **overrides,
    }
    return TranscriberSettings(_env_file=None, **values)


def clip(audio_format: AudioFormat = "wav", data: bytes = AUDIO_BYTES) -> Clip:
    # The hosted strategy sends `data` as it is; the samples are for embedded models.
    return Clip(
        data=data,
        format=audio_format,
        duration_s=1.0,
        samples=np.zeros(SAMPLE_RATE, dtype=np.float32),
    )


@pytest.fixture(scope="module")
def openai_server() -> Iterator[OpenAIWireServer]:
    with OpenAIWireServer() as server:
        yield server


@pytest.fixture
def wire(openai_server: OpenAIWireServer) -> OpenAIWireServer:
    openai_server.reset()
    openai_server.transcript = TRANSCRIPT
    return openai_server


Make = Callable[..., Awaitable[SpeechToText]]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """Builds and starts strategies from settings values; closes them after the test."""
    started: list[SpeechToText] = []

    async def build(**overrides: Any) -> SpeechToText:
        stt = create_stt(settings(**overrides))
        await stt.start()
        started.append(stt)
        return stt

    yield build
    for stt in started:
        await stt.aclose()


def hosted(server: OpenAIWireServer, **overrides: Any) -> dict[str, Any]:
    return {"openai_api_key": API_KEY, "openai_base_url": server.base_url, **overrides}


# -- the hosted strategy ------------------------------------------------------------------


async def test_transcript_comes_back(wire: OpenAIWireServer, make: Make) -> None:
    stt = await make(**hosted(wire))
    assert await stt.transcribe(clip()) == TRANSCRIPT


@pytest.mark.parametrize("audio_format", get_args(AudioFormat))
async def test_request_carries_model_language_and_the_file_as_it_is(
    wire: OpenAIWireServer, make: Make, audio_format: AudioFormat
) -> None:
    stt = await make(**hosted(wire, whisper_model="Systran/faster-whisper-small.en"))
    await stt.transcribe(clip(audio_format))

    sent = wire.last_request
    assert sent.path == "/v1/audio/transcriptions"
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert sent.body == {
        "model": "Systran/faster-whisper-small.en",
        "language": "en",
        "response_format": "json",
        "file": {
            # Servers pick a decoder by extension and content type: both must match.
            "filename": f"clip.{audio_format}",
            "content_type": MIME_TYPES[audio_format],
            "size": len(AUDIO_BYTES),
        },
    }
    [uploaded] = [
        part for part in parse_multipart(sent.raw, sent.headers["content-type"]) if part.filename
    ]
    assert uploaded.data == AUDIO_BYTES


async def test_base_url_without_key_sends_placeholder(wire: OpenAIWireServer, make: Make) -> None:
    # Self-hosted servers (speaches, faster-whisper-server) ignore the key.
    stt = await make(stt_provider="openai", openai_base_url=wire.base_url)
    assert await stt.transcribe(clip()) == TRANSCRIPT
    assert wire.last_request.headers["authorization"] == f"Bearer {PLACEHOLDER_API_KEY}"


async def test_silence_may_give_an_empty_transcript(wire: OpenAIWireServer, make: Make) -> None:
    # Not an error: deciding what to tell the learner about silence happens elsewhere.
    wire.transcript = ""
    stt = await make(**hosted(wire))
    assert await stt.transcribe(clip()) == ""


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (429, STTRateLimitedError),
        (401, STTUnavailableError),
        (400, STTUnavailableError),
        (500, STTUnavailableError),
        (503, STTUnavailableError),
    ],
)
async def test_error_status_maps_to_stt_error(
    wire: OpenAIWireServer, make: Make, status: int, expected: type[STTError]
) -> None:
    wire.fail_next(status)
    stt = await make(**hosted(wire))
    with pytest.raises(STTError) as caught:
        await stt.transcribe(clip())
    assert type(caught.value) is expected
    assert len(wire.requests) == 1, "stt_max_retries=0 must not retry"


async def test_wrong_key_is_unavailable(wire: OpenAIWireServer, make: Make) -> None:
    wire.api_key = "the-right-key"
    stt = await make(**hosted(wire, openai_api_key="a-wrong-key"))
    with pytest.raises(STTUnavailableError):
        await stt.transcribe(clip())


@pytest.mark.parametrize("status", [500, 429])
async def test_retried_when_retries_allowed(
    wire: OpenAIWireServer, make: Make, status: int
) -> None:
    wire.fail_next(status, headers={"retry-after-ms": "10"})
    stt = await make(**hosted(wire, stt_max_retries=1))
    assert await stt.transcribe(clip()) == TRANSCRIPT
    assert len(wire.requests) == 2
    # The retry carries the whole file again.
    assert wire.requests[-1].body["file"]["size"] == len(AUDIO_BYTES)


async def test_no_answer_within_timeout_is_unavailable(wire: OpenAIWireServer, make: Make) -> None:
    wire.delay = 2.0
    stt = await make(**hosted(wire, stt_timeout=0.3))
    started = time.monotonic()
    with pytest.raises(STTUnavailableError):
        await stt.transcribe(clip())
    assert time.monotonic() - started < 2.0, "the client must give up before the server answers"


async def test_unreachable_endpoint_is_unavailable(make: Make) -> None:
    # A port that was free a moment ago: nothing listens there now.
    with OpenAIWireServer() as gone:
        url = gone.base_url
    stt = await make(openai_api_key=API_KEY, openai_base_url=url)
    with pytest.raises(STTUnavailableError):
        await stt.transcribe(clip())


@pytest.mark.parametrize(
    ("kind", "answer"),
    [
        ("html", PlainTextResponse("<html><body>502 Bad Gateway</body></html>")),
        ("broken-json", PlainTextResponse("{not json", media_type="application/json")),
        ("no-text-field", JSONResponse({"transcript": "a field of another name"})),
    ],
)
async def test_malformed_answer_is_unavailable(
    wire: OpenAIWireServer, make: Make, kind: str, answer: PlainTextResponse | JSONResponse
) -> None:
    # A proxy or a not-quite-compatible server answering 200 with something else,
    # served from a route of its own beside the well-behaved one.
    wire.app.post(f"/{kind}/v1/audio/transcriptions")(lambda: answer)
    stt = await make(openai_api_key=API_KEY, openai_base_url=f"{wire.root_url}/{kind}/v1")
    with pytest.raises(STTUnavailableError):
        await stt.transcribe(clip())


async def test_transcribe_before_start_is_a_programming_error(wire: OpenAIWireServer) -> None:
    stt = create_stt(settings(**hosted(wire)))
    with pytest.raises(RuntimeError, match="start"):
        await stt.transcribe(clip())


# -- the server's other response formats, for later users of tests/wire ----------------------


async def test_openai_server_text_and_verbose_formats_parse(wire: OpenAIWireServer) -> None:
    client = openai.AsyncOpenAI(api_key=API_KEY, base_url=wire.base_url, max_retries=0)
    async with client:
        text = await client.audio.transcriptions.create(
            model="whisper-1", file=("clip.mp3", AUDIO_BYTES, "audio/mpeg"), response_format="text"
        )
        verbose = await client.audio.transcriptions.create(
            model="whisper-1",
            file=("clip.mp3", AUDIO_BYTES, "audio/mpeg"),
            response_format="verbose_json",
        )
    assert text.strip() == TRANSCRIPT
    assert verbose.text == TRANSCRIPT
    assert verbose.segments is not None
    assert verbose.segments[0].text.strip() == TRANSCRIPT


async def test_openai_server_refuses_an_upload_without_a_file(wire: OpenAIWireServer) -> None:
    client = openai.AsyncOpenAI(api_key=API_KEY, base_url=wire.base_url, max_retries=0)
    async with client:
        with pytest.raises(openai.BadRequestError):
            await client.audio.transcriptions.create(
                model="whisper-1", file=("clip.wav", b"", "audio/wav")
            )


# -- which strategy ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, LocalWhisperSTT),
        ({"openai_api_key": "k"}, OpenAIWhisperSTT),
        ({"openai_api_key": "k", "openai_base_url": "http://h/v1"}, OpenAIWhisperSTT),
        # A base URL alone does not choose the hosted strategy (STT_PROVIDER=openai does).
        ({"openai_base_url": "http://h/v1"}, LocalWhisperSTT),
        # Empty values, as `KEY=` in a compose file gives, count as unset.
        ({"openai_api_key": "", "openai_base_url": ""}, LocalWhisperSTT),
        ({"stt_provider": "", "openai_api_key": "k"}, OpenAIWhisperSTT),
        ({"stt_provider": "  ", "openai_api_key": ""}, LocalWhisperSTT),
        # An explicit choice wins over whatever else is set.
        ({"stt_provider": "local", "openai_api_key": "k"}, LocalWhisperSTT),
        ({"stt_provider": "openai", "openai_base_url": "http://h/v1"}, OpenAIWhisperSTT),
        ({"stt_provider": "openai", "openai_api_key": "k"}, OpenAIWhisperSTT),
        ({"stt_provider": " OpenAI ", "openai_api_key": "k"}, OpenAIWhisperSTT),
        ({"stt_provider": "LOCAL"}, LocalWhisperSTT),
    ],
)
def test_choice_rule(values: dict[str, Any], expected: type[SpeechToText]) -> None:
    stt = create_stt(settings(**values))
    assert type(stt) is expected
    assert isinstance(stt, SpeechToText)
    assert choose_stt_name(settings(**values)) == stt.name


def test_chosen_strategy_names_its_model() -> None:
    stt = create_stt(settings(openai_api_key="k", whisper_model="gpt-4o-mini-transcribe"))
    assert (stt.name, stt.model) == ("openai", "gpt-4o-mini-transcribe")
    stt = create_stt(settings())
    assert (stt.name, stt.model) == ("local", "whisper-tiny.en")


def test_unknown_strategy_names_the_allowed_values() -> None:
    with pytest.raises(ValueError, match="deepgram") as caught:
        create_stt(settings(stt_provider="deepgram"))
    for allowed in ("openai", "local", "module:factory"):
        assert allowed in str(caught.value)


def test_explicit_openai_without_key_or_url_says_what_is_missing() -> None:
    with pytest.raises(ValueError, match="OPENAI_API_KEY") as caught:
        create_stt(settings(stt_provider="openai"))
    assert "OPENAI_BASE_URL" in str(caught.value)


# -- "package.module:factory" -------------------------------------------------------------


class ScriptedSTT:
    """A stand-in such as a benchmark would plug in."""

    name = "scripted"

    def __init__(self, config: TranscriberSettings) -> None:
        self.model = config.whisper_model
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def transcribe(self, clip: Clip) -> str:
        return f"{clip.duration_s:.1f} seconds of {clip.format}"

    async def aclose(self) -> None:
        self.started = False


class WrongSignatureSTT(ScriptedSTT):
    async def transcribe(self, clip: Clip, language: str) -> str:  # type: ignore[override]
        return "never called"


class ScriptedFactory:
    @staticmethod
    def build(config: TranscriberSettings) -> ScriptedSTT:
        return ScriptedSTT(config)


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch) -> str:
    module = types.ModuleType("stt_plugin_for_tests")
    module.make_scripted = ScriptedSTT  # type: ignore[attr-defined]
    module.ScriptedFactory = ScriptedFactory  # type: ignore[attr-defined]
    module.make_nothing = lambda config: object()  # type: ignore[attr-defined]
    module.make_wrong = WrongSignatureSTT  # type: ignore[attr-defined]
    module.not_callable = 42  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module.__name__


async def test_factory_path_builds_the_custom_strategy(plugin: str, make: Make) -> None:
    stt = await make(stt_provider=f"{plugin}:make_scripted", whisper_model="bench-double")
    assert isinstance(stt, ScriptedSTT)
    assert stt.started
    assert stt.model == "bench-double"
    assert await stt.transcribe(clip("ogg")) == "1.0 seconds of ogg"


def test_factory_path_may_name_an_attribute_of_an_attribute(plugin: str) -> None:
    stt = create_stt(settings(stt_provider=f"{plugin}:ScriptedFactory.build"))
    assert isinstance(stt, ScriptedSTT)


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("no_such_module_anywhere:make", ValueError, "No module named"),
        ("{plugin}:missing", ValueError, "has no attribute 'missing'"),
        ("{plugin}:not_callable", ValueError, "not callable"),
        ("{plugin}:make_nothing", TypeError, "not a usable SpeechToText: no attribute 'name'"),
        ("{plugin}:make_wrong", TypeError, r"transcribe\(\) cannot be called as"),
        (":make_scripted", ValueError, "package.module:factory"),
    ],
)
def test_factory_path_errors_are_clear(
    plugin: str, spec: str, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        create_stt(settings(stt_provider=spec.format(plugin=plugin)))
