"""Claude through the Anthropic Messages API, streamed."""

import json
from collections.abc import AsyncGenerator, Sequence

import anthropic
import httpx2
from anthropic.types import MessageDeltaUsage, MessageParam, RawMessageStreamEvent
from anthropic.types import Usage as MessageUsage

from services.responder.providers.base import (
    ChatMessage,
    CompleteMixin,
    LLMError,
    LLMRateLimitedError,
    LLMUnavailableError,
    Usage,
    current_usage,
    token_count,
)
from services.responder.settings import ResponderSettings

# Error types Anthropic uses when the caller should back off rather than give up;
# they also arrive as `event: error` in the middle of an otherwise 200 stream.
_BACK_OFF_TYPES = frozenset({"rate_limit_error", "overloaded_error"})


class AnthropicProvider(CompleteMixin):
    name = "anthropic"

    def __init__(self, settings: ResponderSettings) -> None:
        key = settings.anthropic_api_key.get_secret_value() if settings.anthropic_api_key else ""
        if not key:
            raise ValueError("the anthropic provider needs ANTHROPIC_API_KEY")
        self.model = settings.claude_model
        self._api_key = key
        self._base_url = settings.anthropic_base_url or None
        self._timeout = settings.llm_timeout
        self._max_retries = settings.llm_max_retries
        self._client: anthropic.AsyncAnthropic | None = None

    async def start(self) -> None:
        if self._client is None:
            self._client = anthropic.AsyncAnthropic(
                api_key=self._api_key,
                base_url=self._base_url,
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
        # `temperature` is deliberately not sent: SDK 2.x speaks API version
        # 2026-10-21, which rejects every sampling parameter with a 400 (the SDK
        # no longer even accepts one).
        del temperature
        client = self._require_client()
        usage = current_usage()
        history: list[MessageParam] = []
        for m in messages:
            if m.role == "user":
                history.append({"role": "user", "content": m.content})
            else:
                history.append({"role": "assistant", "content": m.content})
        try:
            stream = await client.messages.create(
                model=self.model,
                system=system or anthropic.omit,
                messages=history,
                max_tokens=max_tokens,
                stream=True,
            )
            # Closing the caller's iteration leaves this block: the stream closes
            # and no more tokens are billed.
            async with stream:
                async for event in stream:
                    if event.type == "content_block_delta" and event.delta.type == "text_delta":
                        yield event.delta.text
                    elif usage is not None:
                        _note_usage(usage, event)
        except anthropic.AnthropicError as err:
            raise _map_error(err) from err
        except httpx2.HTTPError as err:
            # The SDK lets transport errors in the middle of a stream (a read
            # timeout after the headers arrived, a dropped connection) through raw.
            raise LLMUnavailableError(f"Anthropic stream broke off: {err!r}") from err
        except json.JSONDecodeError as err:
            raise LLMUnavailableError(f"Anthropic sent a malformed stream event: {err}") from err

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    def _require_client(self) -> anthropic.AsyncAnthropic:
        if self._client is None:
            raise RuntimeError("AnthropicProvider.start() was not called")
        return self._client


def _note_usage(usage: Usage, event: RawMessageStreamEvent) -> None:
    # message_start has the input's count (its output count is a placeholder),
    # message_delta at the end the output's and the stop reason, and from newer
    # API versions the input's again. A stream closed early has no message_delta:
    # its output count stays unknown rather than the placeholder.
    if event.type == "message_start":
        _note_input(usage, event.message.usage)
    elif event.type == "message_delta":
        output = token_count(event.usage.output_tokens)
        if output is not None:
            usage.output_tokens = output
        _note_input(usage, event.usage)
        if event.delta.stop_reason:
            usage.finish_reason = event.delta.stop_reason


def _note_input(usage: Usage, counts: MessageUsage | MessageDeltaUsage) -> None:
    fresh = token_count(counts.input_tokens)
    if fresh is None or usage.input_tokens is not None:
        return
    # Anthropic counts cached input apart from `input_tokens`; OpenTelemetry's
    # `gen_ai.usage.input_tokens` counts every input token.
    read = token_count(counts.cache_read_input_tokens)
    written = token_count(counts.cache_creation_input_tokens)
    usage.input_tokens = fresh + (read or 0) + (written or 0)
    usage.cache_read_tokens = read


def _map_error(err: anthropic.AnthropicError) -> LLMError:
    if isinstance(err, anthropic.APIStatusError):
        message = err.api_message or str(err)
        if (
            isinstance(err, anthropic.RateLimitError | anthropic.OverloadedError)
            or err.status_code in (429, 529)
            or err.type in _BACK_OFF_TYPES
        ):
            return LLMRateLimitedError(
                f"Anthropic asked to back off ({err.status_code}): {message}"
            )
        return LLMUnavailableError(f"Anthropic error {err.status_code}: {message}")
    if isinstance(err, anthropic.APITimeoutError):
        return LLMUnavailableError("Anthropic request timed out")
    if isinstance(err, anthropic.APIConnectionError):
        return LLMUnavailableError(f"cannot reach Anthropic: {err}")
    return LLMUnavailableError(f"Anthropic request failed: {err}")
