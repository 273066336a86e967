"""OpenAI's hosted Whisper, or any OpenAI-compatible `/audio/transcriptions` server
(faster-whisper-server / speaches, LocalAI, vLLM), through the official SDK."""

import json

import httpx2
import openai

from services.transcriber.audio import MIME_TYPES, Clip
from services.transcriber.settings import TranscriberSettings
from services.transcriber.stt.base import (
    STTError,
    STTRateLimitedError,
    STTUnavailableError,
    current_hearing,
)

# Self-hosted servers ignore the key but the SDK insists on one. Passing it
# explicitly also stops the SDK from reading the environment on its own.
PLACEHOLDER_API_KEY = "not-needed"
# The learner speaks English (v1) and tiny.en is English-only: naming the language
# also spares a hosted model the language detection pass.
LANGUAGE = "en"


class OpenAIWhisperSTT:
    name = "openai"

    def __init__(self, settings: TranscriberSettings) -> None:
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
        base_url = settings.openai_base_url or None
        if not key and base_url is None:
            raise ValueError(
                "the openai speech-to-text needs OPENAI_API_KEY (api.openai.com) or "
                "OPENAI_BASE_URL (a self-hosted OpenAI-compatible transcription server)"
            )
        self.model = settings.whisper_model
        self._api_key = key or PLACEHOLDER_API_KEY
        self._base_url = base_url
        self._timeout = settings.stt_timeout
        self._max_retries = settings.stt_max_retries
        self._client: openai.AsyncOpenAI | None = None

    async def start(self) -> None:
        if self._client is None:
            self._client = openai.AsyncOpenAI(
                api_key=self._api_key,
                base_url=self._base_url,
                timeout=self._timeout,
                max_retries=self._max_retries,
            )

    async def transcribe(self, clip: Clip) -> str:
        client = self._require_client()
        try:
            # The file name's extension and the part's content type are what the
            # server goes by to pick a decoder: both must match the real format.
            result = await client.audio.transcriptions.create(
                model=self.model,
                file=(clip.filename, clip.data, MIME_TYPES[clip.format]),
                language=LANGUAGE,
                response_format="json",
            )
        except openai.OpenAIError as err:
            raise _map_error(err) from err
        except httpx2.HTTPError as err:
            raise STTUnavailableError(f"{self._where} transport failed: {err!r}") from err
        except json.JSONDecodeError as err:
            raise STTUnavailableError(f"{self._where} sent malformed JSON: {err}") from err
        # The SDK builds the result without validating it, so a compatible server
        # that answers with another shape shows up here rather than as an error.
        text = getattr(result, "text", None)
        if not isinstance(text, str):
            raise STTUnavailableError(f"{self._where} answered without a transcript text")
        hearing = current_hearing()
        if hearing is not None:
            # The language is the one asked for. Whisper's no-speech estimates come
            # only with `verbose_json`, which the gpt-4o transcription models refuse.
            hearing.language = LANGUAGE
        return text

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    @property
    def _where(self) -> str:
        return self._base_url or "OpenAI"

    def _require_client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            raise RuntimeError("OpenAIWhisperSTT.start() was not called")
        return self._client


def _map_error(err: openai.OpenAIError) -> STTError:
    if isinstance(err, openai.RateLimitError):
        return STTRateLimitedError(f"transcription service asked to back off (429): {err.message}")
    if isinstance(err, openai.APIStatusError):
        return STTUnavailableError(f"transcription service error {err.status_code}: {err.message}")
    if isinstance(err, openai.APITimeoutError):
        return STTUnavailableError("transcription request timed out")
    if isinstance(err, openai.APIConnectionError):
        return STTUnavailableError(f"cannot reach the transcription service: {err}")
    return STTUnavailableError(f"transcription request failed: {err}")
