"""Counting open WebSockets, and giving freed memory back when the last one closes.

glibc keeps memory that Python frees for later reuse, so after a burst of
connections a gateway's RSS would stay at its peak although nothing is leaked.
When the count falls to zero, a collection frees what the closed connections left
in reference cycles and `malloc_trim` returns free memory to the system. Both run
in a worker thread, off the event loop: `malloc_trim` walks the whole heap and
releases the interpreter while it does; the collection cannot (it is the
interpreter's own work), but it is only a part of the cost.
"""

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        # Not glibc (musl has no malloc_trim): nothing to return.
        return None
    return trim


class ConnectionGauge:
    def __init__(self) -> None:
        self.open = 0
        self._trim = _malloc_trim()
        self._trimming: asyncio.Task[None] | None = None

    def opened(self) -> None:
        self.open += 1

    def closed(self) -> None:
        self.open -= 1
        if self.open == 0 and self._trim is not None and self._trimming is None:
            self._trimming = asyncio.get_running_loop().create_task(self._give_back())

    async def _give_back(self) -> None:
        try:
            await asyncio.to_thread(self._collect_and_trim)
            log.debug("last WebSocket closed: freed memory returned to the system")
        finally:
            self._trimming = None

    def _collect_and_trim(self) -> None:
        gc.collect()
        if self._trim is not None:
            self._trim(0)

    async def aclose(self) -> None:
        if self._trimming is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._trimming
