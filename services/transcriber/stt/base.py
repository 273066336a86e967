"""The one interface every speech-to-text strategy implements, and its errors."""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from services.transcriber.audio import Clip


class STTError(Exception):
    """No transcript. Callers pick what to tell the learner by subclass."""


class STTRateLimitedError(STTError):
    """The service asked us to slow down (429): worth trying again later."""


class STTUnavailableError(STTError):
    """The service could not be reached or answered badly.

    Connection errors, timeouts, rejected credentials, 5xx and other error statuses,
    malformed replies, and failures of the embedded model.
    """


class STTCircuitOpenError(STTUnavailableError):
    """The service failed several clips in a row just now: not called at all."""


@dataclass
class Hearing:
    """What a recogniser tells of one transcription besides the words, as far as it
    knows.

    A side channel rather than part of `transcribe`, whose signature custom
    strategies already implement: the caller opens one with `noting_hearing()`
    around the call, a strategy that knows fills it in, one that does not leaves
    it empty.
    """

    # The language the words were taken to be in (ISO 639-1, "en").
    language: str | None = None
    # Whisper's estimate that a 30 s window held no speech: the highest of the
    # clip's windows that produced text.
    no_speech_prob: float | None = None
    # Whisper's segments: none when every window was dropped as silence or noise.
    segments: int | None = None


_hearing: ContextVar[Hearing | None] = ContextVar("stt_hearing", default=None)


@contextmanager
def noting_hearing() -> Iterator[Hearing]:
    """A `Hearing` for the transcription run in this block."""
    hearing = Hearing()
    token = _hearing.set(hearing)
    try:
        yield hearing
    finally:
        _hearing.reset(token)


def current_hearing() -> Hearing | None:
    """Where the transcription being started reports; None when nobody asks (no
    tracing), and the strategy spares itself the bookkeeping. Read it in
    `transcribe` itself: a thread the work is handed to has another context."""
    return _hearing.get()


@runtime_checkable
class SpeechToText(Protocol):
    """A speech recogniser that turns one validated clip into the words spoken.

    `transcribe` raises only `STTError` subclasses for recogniser failures: no SDK
    exception type crosses this boundary, so callers need not know which strategy
    is configured.
    """

    # "openai", "local", or a custom strategy's own name.
    name: str
    # Model name or folder, for logs.
    model: str

    async def start(self) -> None:
        """Create clients, or load and warm the model; called once per process."""
        ...

    async def transcribe(self, clip: Clip) -> str:
        """The raw transcript, as the model gives it: possibly empty for silence.

        Trimming and filtering of known non-speech phrases happen elsewhere.
        """
        ...

    async def aclose(self) -> None:
        """Release clients or the model; the strategy is not used afterwards."""
        ...
