"""The one interface every language-model provider implements, and its errors."""

from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from contextlib import aclosing, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal, Protocol, cast, runtime_checkable

from pydantic import BaseModel, ConfigDict


class ChatMessage(BaseModel):
    """One turn of the conversation history, in the order it happened."""

    model_config = ConfigDict(frozen=True)

    role: Literal["user", "assistant"]
    content: str


def chat_messages(system: str, messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """The system prompt and history as OpenAI-style chat messages, the format both
    OpenAI-compatible servers and llama.cpp's chat completion take."""
    chat = [{"role": "system", "content": system}] if system else []
    chat += [{"role": m.role, "content": m.content} for m in messages]
    return chat


# Called with the reply generated so far; True ends the generation there.
StopWhen = Callable[[str], bool]


class LLMError(Exception):
    """The model gave no reply. Callers pick what to tell the user by subclass."""


class LLMRateLimitedError(LLMError):
    """The provider asked us to slow down (429) or is overloaded (Anthropic's 529)."""


class LLMUnavailableError(LLMError):
    """The provider could not be reached or answered badly.

    Connection errors, timeouts, rejected credentials, 5xx and other error statuses,
    malformed or empty replies, and failures of the embedded model.
    """


class LLMCircuitOpenError(LLMUnavailableError):
    """The provider failed several calls in a row just now: not called at all."""


@dataclass
class Usage:
    """What one generation cost and why it ended, as far as its provider says.

    A side channel rather than part of `stream`, whose signature plugin providers
    already implement: the caller opens one with `reporting_usage()` around the
    stream, a provider that knows fills it in while streaming (the built-in ones
    do), and one that does not leaves it empty.
    """

    # Every input token, those a prompt cache served included.
    input_tokens: int | None = None
    output_tokens: int | None = None
    # Of `input_tokens`, those the provider's prompt cache served.
    cache_read_tokens: int | None = None
    # In the provider's own words: "end_turn", "max_tokens", "stop", "length"...
    finish_reason: str | None = None


_usage: ContextVar[Usage | None] = ContextVar("llm_usage", default=None)


@contextmanager
def reporting_usage() -> Iterator[Usage]:
    """A `Usage` for the generation streamed (and read) in this block."""
    usage = Usage()
    token = _usage.set(usage)
    try:
        yield usage
    finally:
        _usage.reset(token)


def current_usage() -> Usage | None:
    """Where the generation being started reports its usage; None when nobody asks,
    so a provider spares itself the bookkeeping.

    Read it when `stream` begins: the generator's body runs in its caller's
    context, a thread the provider hands the work to does not."""
    return _usage.get()


def token_count(value: object) -> int | None:
    """`value` if it is a count: a server's usage figures are not trusted to be."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@runtime_checkable
class LLMProvider(Protocol):
    """A language model that turns a system prompt and history into a reply, streamed.

    `stream` yields the reply's text as the model writes it (tokens, or whatever
    pieces the model's API sends). The caller stops it early by closing it (leaving
    an `async for` under `aclosing`): the provider must then stop the model at once
    (close the HTTP stream, stop the generation thread), so a cut-short reply costs
    no more tokens. It raises only `LLMError` subclasses for provider failures: no
    SDK exception type crosses this boundary, so callers need not know which
    provider is configured.
    """

    # "anthropic", "openai", "local", or a custom provider's own name.
    name: str
    # Model name or file, for logs.
    model: str

    async def start(self) -> None:
        """Create clients, or load and warm the model; called once per process."""
        ...

    def stream(
        self,
        system: str,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
    ) -> AsyncGenerator[str, None]:
        """The reply's text as it is written (an `async def` with `yield`)."""
        ...

    async def aclose(self) -> None:
        """Release clients or the model; the provider is not used afterwards."""
        ...


async def complete(
    llm: LLMProvider,
    system: str,
    messages: Sequence[ChatMessage],
    *,
    max_tokens: int,
    temperature: float,
    enough: StopWhen | None = None,
) -> str:
    """The whole reply of `llm.stream` (never empty), stopped as soon as `enough`
    says so: a caller that keeps three sentences need not wait for a tenth."""
    parts: list[str] = []
    async with aclosing(
        llm.stream(system, messages, max_tokens=max_tokens, temperature=temperature)
    ) as pieces:
        async for piece in pieces:
            parts.append(piece)
            if enough is not None and enough("".join(parts)):
                break
    text = "".join(parts)
    if not text.strip():
        raise LLMUnavailableError(f"{llm.name} model {llm.model} returned no text")
    return text


class CompleteMixin:
    """`complete()` as a method, for the built-in providers and their tests."""

    async def complete(
        self,
        system: str,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
        enough: StopWhen | None = None,
    ) -> str:
        return await complete(
            cast(LLMProvider, self),
            system,
            messages,
            max_tokens=max_tokens,
            temperature=temperature,
            enough=enough,
        )
