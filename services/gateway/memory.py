"""Counting open WebSockets, and giving freed memory back when the last one closes.

glibc keeps memory that Python frees for later reuse, so after a burst of
connections a gateway's RSS would stay at its peak although nothing is leaked.
When the count falls to zero, `malloc_trim` returns that memory to the system.
"""

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

    def opened(self) -> None:
        self.open += 1

    def closed(self) -> None:
        self.open -= 1
        if self.open == 0 and self._trim is not None:
            gc.collect()
            self._trim(0)
            log.debug("last WebSocket closed: freed memory returned to the system")
