"""Any provider behind its circuit breaker (`shared.breaker`).

Wraps the configured provider, plugins included, so every model call of the
responder (replies and summaries) is counted: a provider failing one call after
another is not called at all for a while, and the learner gets v1's "trouble
connecting" reply at once instead of after the SDK's timeouts and retries.
"""

from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing

from services.responder.providers.base import (
    ChatMessage,
    CompleteMixin,
    LLMCircuitOpenError,
    LLMProvider,
    LLMRateLimitedError,
    LLMUnavailableError,
)
from shared.breaker import Breakers, CircuitOpenError
from shared.settings import CommonSettings


class GuardedProvider(CompleteMixin):
    def __init__(self, inner: LLMProvider, breakers: Breakers) -> None:
        self.inner = inner
        self.name = inner.name
        self.model = inner.model
        self._breakers = breakers
        breakers.expect(self.name)

    async def start(self) -> None:
        await self.inner.start()

    async def stream(
        self,
        system: str,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
    ) -> AsyncGenerator[str, None]:
        try:
            async with self._breakers.guard(self.name):
                pieces = self.inner.stream(
                    system, messages, max_tokens=max_tokens, temperature=temperature
                )
                async with aclosing(pieces):
                    async for piece in pieces:
                        yield piece
        except CircuitOpenError as exc:
            raise LLMCircuitOpenError(str(exc)) from exc

    async def aclose(self) -> None:
        await self.inner.aclose()


def guarded(llm: LLMProvider, settings: CommonSettings) -> GuardedProvider:
    breakers = Breakers(
        failures=settings.breaker_failures,
        open_s=settings.breaker_open_s,
        # Rate limits count: a provider that keeps refusing needs the pause too.
        counted=(LLMUnavailableError, LLMRateLimitedError),
    )
    return GuardedProvider(llm, breakers)
