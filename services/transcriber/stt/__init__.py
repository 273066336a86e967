"""Speech-to-text strategies behind one interface, and the rule that picks one."""

import importlib
from typing import Any

from services.transcriber.settings import TranscriberSettings
from services.transcriber.stt.base import (
    SpeechToText,
    STTError,
    STTRateLimitedError,
    STTUnavailableError,
)

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
        return _from_factory(choice, settings)
    raise ValueError(
        f"STT_PROVIDER={choice!r} is not one of {', '.join(BUILTIN_STT)} "
        "or a 'package.module:factory' path"
    )


def _from_factory(spec: str, settings: TranscriberSettings) -> SpeechToText:
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise ValueError(f"STT_PROVIDER={spec!r}: expected 'package.module:factory'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"STT_PROVIDER={spec!r}: cannot import {module_name!r}: {err}") from err
    for attr in attr_path.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError as err:
            raise ValueError(
                f"STT_PROVIDER={spec!r}: {module_name!r} has no {attr_path!r}"
            ) from err
    if not callable(target):
        raise ValueError(f"STT_PROVIDER={spec!r}: {attr_path!r} is not callable")
    stt = target(settings)
    # A structural check only (attributes present), but it catches a factory that
    # returns the wrong thing at startup instead of on the first clip.
    if not isinstance(stt, SpeechToText):
        raise TypeError(
            f"STT_PROVIDER={spec!r} returned {type(stt).__name__}, which lacks the "
            "SpeechToText attributes (name, model, start, transcribe, aclose)"
        )
    return stt
