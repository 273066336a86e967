"""Speech-to-text strategies behind one interface, and the rule that picks one."""

from services.transcriber.settings import TranscriberSettings
from services.transcriber.stt.base import (
    SpeechToText,
    STTError,
    STTRateLimitedError,
    STTUnavailableError,
)
from shared.plugins import load_factory

__all__ = [
    "BUILTIN_STT",
    "STTError",
    "STTRateLimitedError",
    "STTUnavailableError",
    "SpeechToText",
    "choose_stt_name",
    "create_stt",
]

BUILTIN_STT = ("openai", "local")


def choose_stt_name(settings: TranscriberSettings) -> str:
    """STT_PROVIDER if set; else openai with OPENAI_API_KEY, else local.

    Empty strings count as unset, as they do when a compose file passes `KEY=`.
    """
    explicit = (settings.stt_provider or "").strip()
    if explicit:
        return explicit.lower() if explicit.lower() in BUILTIN_STT else explicit
    if settings.openai_api_key is not None and settings.openai_api_key.get_secret_value():
        return "openai"
    return "local"


def create_stt(settings: TranscriberSettings) -> SpeechToText:
    """The configured strategy, constructed but not started (call `start()` once)."""
    choice = choose_stt_name(settings)
    # Imported on demand: a deployment pays only for what it uses (faster-whisper
    # pulls in CTranslate2 and PyAV's native libraries on import).
    if choice == "openai":
        from services.transcriber.stt.openai_whisper import OpenAIWhisperSTT

        return OpenAIWhisperSTT(settings)
    if choice == "local":
        from services.transcriber.stt.local_whisper import LocalWhisperSTT

        return LocalWhisperSTT(settings)
    if ":" in choice:
        # mypy takes no Protocol as type[T] (python/mypy#4717); it is only inspected.
        return load_factory("STT_PROVIDER", choice, settings, SpeechToText)  # type: ignore[type-abstract]
    raise ValueError(
        f"STT_PROVIDER={choice!r} is not one of {', '.join(BUILTIN_STT)} "
        "or a 'package.module:factory' path"
    )
