"""The one interface every speech-to-text strategy implements, and its errors."""

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
