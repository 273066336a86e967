"""Whether the event loop keeps running while some work is awaited."""

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable


async def ticks_during(work: Callable[[], Awaitable[object]], tick_s: float) -> tuple[int, float]:
    """Run `work`; return how often a `tick_s` ticker ticked meanwhile, and how many
    ticks were possible. A blocked loop ticks only between blocking calls."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(tick_s)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    started = time.monotonic()
    try:
        await work()
    finally:
        ticking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticking
    return ticks, (time.monotonic() - started) / tick_s
