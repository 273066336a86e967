"""Any OpenAI-compatible chat endpoint (Ollama, vLLM, llama.cpp server, OpenAI), streamed."""

import json
from collections.abc import AsyncGenerator, Sequence
from typing import Any, cast

import httpx2
import openai
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionStreamOptionsParam

from services.responder.providers.base import (
    ChatMessage,
    CompleteMixin,
    LLMError,
    LLMRateLimitedError,
    LLMUnavailableError,
    Usage,
    chat_messages,
    current_usage,
    token_count,
)
from services.responder.settings import ResponderSettings

# Self-hosted servers ignore the key but the SDK insists on one. Passing it
# explicitly also stops the SDK from falling back to OPENAI_API_KEY, which belongs
# to speech-to-text and must not be sent to an unrelated endpoint.
PLACEHOLDER_API_KEY = "not-needed"


class OpenAICompatProvider(CompleteMixin):
    name = "openai"

    def __init__(self, settings: ResponderSettings) -> None:
        if not settings.llm_base_url:
            raise ValueError(
                "the openai provider needs LLM_BASE_URL, e.g. http://localhost:11434/v1 "
                "(Ollama) or https://api.openai.com/v1"
            )
        self.model = settings.llm_model
        self._base_url = settings.llm_base_url
        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else ""
        self._api_key = key or PLACEHOLDER_API_KEY
        self._timeout = settings.llm_timeout
        self._max_retries = settings.llm_max_retries
        self._client: openai.AsyncOpenAI | None = None

    async def start(self) -> None:
        if self._client is None:
            self._client = openai.AsyncOpenAI(
                base_url=self._base_url,
                api_key=self._api_key,
                timeout=self._timeout,
                max_retries=self._max_retries,
            )

    async def stream(
        self,
        system: str,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
    ) -> AsyncGenerator[str, None]:
        client = self._require_client()
        # Roles are only ever system, user and assistant: the SDK's typed dicts fit.
        chat = cast(list[ChatCompletionMessageParam], chat_messages(system, messages))
        usage = current_usage()
        # Asked for only when someone reads it: the request of an untraced
        # responder stays what every compatible server has always been sent.
        options: ChatCompletionStreamOptionsParam | openai.Omit = (
            {"include_usage": True} if usage is not None else openai.omit
        )
        try:
            # The SDK makes the request (retries, timeouts, error statuses as typed
            # errors), but the event stream is read raw: building a typed chunk
            # object per token was most of the responder's CPU per reply.
            # `max_tokens`, not `max_completion_tokens`: the self-hosted servers this
            # provider exists for understand only the older name.
            async with client.chat.completions.with_streaming_response.create(
                model=self.model,
                messages=chat,
                max_tokens=max_tokens,
                temperature=temperature,
                stream=True,
                stream_options=options,
            ) as response:
                # Leaving this block (the caller closed the stream) closes the
                # connection: the server stops generating.
                async for line in response.iter_lines():
                    text = self._content(line, usage)
                    if text:
                        yield text
        except openai.OpenAIError as err:
            raise _map_error(err) from err
        except httpx2.HTTPError as err:
            raise LLMUnavailableError(f"{self._base_url} stream broke off: {err!r}") from err
        except (json.JSONDecodeError, TypeError, KeyError, IndexError) as err:
            raise LLMUnavailableError(f"{self._base_url} sent a malformed chunk: {err!r}") from err

    def _content(self, line: str, usage: Usage | None) -> str | None:
        """The text one server-sent event line carries, if any."""
        if not line.startswith("data:"):
            # Blank separators, `event:` names and `:` keep-alive comments.
            return None
        data = line[5:].strip()
        if not data or data == "[DONE]":
            return None
        chunk = json.loads(data)
        if chunk.get("error"):
            # A failure after the headers: OpenAI-compatible servers send it in-band.
            raise _stream_error(self._base_url, chunk["error"])
        if usage is not None:
            _note_usage(usage, chunk)
        # Some servers send chunks without choices (usage, keep-alives).
        choices = chunk.get("choices") or ()
        if not choices:
            return None
        content = (choices[0].get("delta") or {}).get("content")
        return content if isinstance(content, str) else None

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    def _require_client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            raise RuntimeError("OpenAICompatProvider.start() was not called")
        return self._client


def _note_usage(usage: Usage, chunk: dict[str, Any]) -> None:
    # Figures come in the last chunk (OpenAI's has no choices, some servers'
    # has); the finish reason in the chunk that ends the choice. A server's odd
    # shapes are skipped here, never raised: the reply itself was fine.
    counts = chunk.get("usage")
    if isinstance(counts, dict):
        usage.input_tokens = token_count(counts.get("prompt_tokens"))
        usage.output_tokens = token_count(counts.get("completion_tokens"))
        details = counts.get("prompt_tokens_details")
        if isinstance(details, dict):
            usage.cache_read_tokens = token_count(details.get("cached_tokens"))
    choices = chunk.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        reason = choices[0].get("finish_reason")
        if isinstance(reason, str) and reason:
            usage.finish_reason = reason


def _map_error(err: openai.OpenAIError) -> LLMError:
    if isinstance(err, openai.RateLimitError):
        return LLMRateLimitedError(f"endpoint asked to back off (429): {err.message}")
    if isinstance(err, openai.APIStatusError):
        return LLMUnavailableError(f"endpoint error {err.status_code}: {err.message}")
    if isinstance(err, openai.APITimeoutError):
        return LLMUnavailableError("endpoint request timed out")
    if isinstance(err, openai.APIConnectionError):
        return LLMUnavailableError(f"cannot reach endpoint: {err}")
    return LLMUnavailableError(f"endpoint request failed: {err}")


def _stream_error(base_url: str, error: object) -> LLMError:
    detail = error if isinstance(error, dict) else {"message": str(error)}
    kind = f"{detail.get('type', '')} {detail.get('code', '')}".lower()
    message = detail.get("message") or "error in the middle of the stream"
    if "rate_limit" in kind or "requests" in kind:
        return LLMRateLimitedError(f"{base_url} asked to back off mid-stream: {message}")
    return LLMUnavailableError(f"{base_url} failed mid-stream: {message}")
