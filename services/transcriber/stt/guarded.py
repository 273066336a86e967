"""Any speech-to-text strategy behind its circuit breaker (`shared.breaker`), so
a recogniser that fails clip after clip is not called for a while, and the
learner is told at once that transcription failed."""

from services.transcriber.audio import Clip
from services.transcriber.stt.base import (
    SpeechToText,
    STTCircuitOpenError,
    STTRateLimitedError,
    STTUnavailableError,
)
from shared.breaker import Breakers, CircuitOpenError
from shared.settings import CommonSettings


class GuardedSTT:
    def __init__(self, inner: SpeechToText, breakers: Breakers) -> None:
        self.inner = inner
        self.name = inner.name
        self.model = inner.model
        self._breakers = breakers
        breakers.expect(self.name)

    async def start(self) -> None:
        await self.inner.start()

    async def transcribe(self, clip: Clip) -> str:
        try:
            async with self._breakers.guard(self.name):
                return await self.inner.transcribe(clip)
        except CircuitOpenError as exc:
            raise STTCircuitOpenError(str(exc)) from exc

    async def aclose(self) -> None:
        await self.inner.aclose()


def guarded(stt: SpeechToText, settings: CommonSettings) -> GuardedSTT:
    breakers = Breakers(
        failures=settings.breaker_failures,
        open_s=settings.breaker_open_s,
        counted=(STTUnavailableError, STTRateLimitedError),
    )
    return GuardedSTT(stt, breakers)
