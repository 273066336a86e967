"""A circuit breaker per provider (purgatory), so a dead provider fails fast.

Each provider call runs under `Breakers.guard(name)`. After BREAKER_FAILURES
failures in a row the circuit opens: for BREAKER_OPEN_S seconds every call fails
at once with `CircuitOpenError`, which the caller turns into its usual apology,
instead of every learner waiting out the SDK's timeouts and retries. Then calls
go through again (half-open): the first success closes the circuit, a failure
opens it for another BREAKER_OPEN_S.

Only the exceptions a breaker is told to count are failures. A stream its caller
stops early (a cancel, a reply long enough) is a success: the provider answered.
The state is per process: each replica learns on its own that a provider died,
which costs each a few failures and needs no shared store.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import Gauge
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState

log = logging.getLogger(__name__)

STATE = Gauge(
    "lva_provider_circuit_state",
    "Circuit breaker of each provider: 0 closed, 1 half-open (trying again), 2 open",
    ["provider"],
)
_STATE_VALUE = {"closed": 0, "half-opened": 1, "opened": 2}


class CircuitOpenError(Exception):
    """The provider failed too often just now: not called at all."""

    def __init__(self, name: str, open_s: float) -> None:
        super().__init__(
            f"{name} failed {open_s:g} s ago or less, several times in a row: not called "
            "while its circuit is open"
        )
        self.name = name


class Breakers:
    def __init__(
        self, *, failures: int, open_s: float, counted: tuple[type[BaseException], ...]
    ) -> None:
        self._open_s = open_s

        def not_counted(exc: BaseException) -> bool:
            return not isinstance(exc, counted)

        self._factory = AsyncCircuitBreakerFactory(
            default_threshold=failures,
            default_ttl=open_s,
            # An excluded exception ends the call as a success would.
            exclude=[(BaseException, not_counted)],
        )
        self._factory.add_listener(self._changed)

    def expect(self, name: str) -> None:
        """Export provider `name`'s circuit (closed) before its first call."""
        STATE.labels(name).set(0)

    def _changed(self, name: str, kind: str, event: Any) -> None:
        if kind != "state_changed":
            return
        state = str(event.state)
        STATE.labels(name).set(_STATE_VALUE.get(state, 0))
        if state == "opened":
            log.warning(
                "%s failed repeatedly: circuit open, calls fail at once for %g s",
                name,
                self._open_s,
            )
        elif state == "half-opened":
            log.info("%s: circuit half-open, trying it again", name)
        else:
            log.warning("%s answers again: circuit closed", name)

    @asynccontextmanager
    async def guard(self, name: str) -> AsyncIterator[None]:
        """Run the block as one call of provider `name`: CircuitOpenError at once
        while its circuit is open, otherwise its outcome counted."""
        breaker = await self._factory.get_breaker(name)
        try:
            await breaker.__aenter__()
        except OpenedState as exc:
            raise CircuitOpenError(name, self._open_s) from exc
        try:
            yield
        except BaseException as exc:
            await breaker.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        await breaker.__aexit__(None, None, None)
