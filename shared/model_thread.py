"""An embedded model owned by one thread for its whole life.

llama.cpp and CTranslate2 objects must not be used from two threads at once, and
their work is long and CPU-bound: each embedded model lives on a single worker
thread, calls queue there, and the event loop never blocks. The work checks a flag
between tokens (or windows) so an abandoned call or a shutdown frees the model soon.
"""

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

M = TypeVar("M")
R = TypeVar("R")


def default_threads() -> int:
    """Compute threads for an embedded model: every core but one.

    Their threads spin while they wait: one per core, with nothing else on the
    machine, is fastest, but beside the other services (make run) that oversubscribes
    the CPU and a reply takes several times longer. A machine that runs one model
    alone sets LOCAL_LLM_THREADS / WHISPER_THREADS to its core count.
    """
    return max(1, (os.cpu_count() or 2) - 1)


class ModelThread(Generic[M]):
    def __init__(self, name: str) -> None:
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self.model: M | None = None
        # Set by close(): work in progress stops at its next check.
        self._closing = threading.Event()

    @property
    def started(self) -> bool:
        return self._executor is not None and self.model is not None

    async def start(self, load: Callable[[], M]) -> None:
        """Load the model on its thread (once; later calls do nothing)."""
        if self._executor is not None:
            return
        self._closing.clear()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
        try:
            self.model = await asyncio.get_running_loop().run_in_executor(executor, load)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor = executor

    async def run(self, work: Callable[[M, threading.Event], R]) -> R:
        """`work(model, cancelled)` on the model's thread; cancelled is set if the
        caller gives up, and `stopping(cancelled)` tells the work to end early."""
        if self._executor is None or self.model is None:
            raise RuntimeError(f"{self._name}: start() was not called")
        cancelled = threading.Event()
        job = asyncio.get_running_loop().run_in_executor(
            self._executor, work, self.model, cancelled
        )
        try:
            return await job
        except asyncio.CancelledError:
            # The thread cannot be interrupted; the work sees the flag at its next check.
            cancelled.set()
            raise

    def stopping(self, cancelled: threading.Event) -> bool:
        return cancelled.is_set() or self._closing.is_set()

    async def close(self, release: Callable[[M], None]) -> None:
        """Release the model on its own thread, after any work it is finishing."""
        if self._executor is None:
            return
        self._closing.set()
        executor, self._executor = self._executor, None
        model, self.model = self.model, None
        if model is not None:
            await asyncio.get_running_loop().run_in_executor(executor, release, model)
        executor.shutdown(wait=False)
