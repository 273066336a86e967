"""Stopping long-running asyncio tasks for sure, within a bound.

A cancel can be lost: on Python 3.11 redis-py sends each command inside
`asyncio.wait_for`, which drops a cancel that comes just as the write ends, and a
library caught mid-reconnect has been seen to swallow one too; the task then
awaits again. Awaiting it after a single cancel would hold a service's shutdown
forever, so it is cancelled again until it ends.
"""

import asyncio
import logging
import time
from collections.abc import Iterable

log = logging.getLogger(__name__)

# How long stopping may take, and how often a task that has not ended is cancelled again.
STOP_TIMEOUT_S = 5.0
STOP_RETRY_S = 0.5


async def cancel_all(
    tasks: Iterable["asyncio.Task[object] | asyncio.Task[None]"], what: str
) -> None:
    """Cancel `tasks` until they end (at most STOP_TIMEOUT_S); log those that did
    not, and those that had failed before (`what` names them in the log)."""
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while pending and time.monotonic() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=STOP_RETRY_S)
    for task in pending:
        log.warning("%s %s did not stop within %g s", what, task.get_name(), STOP_TIMEOUT_S)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.warning("%s %s had failed: %r", what, task.get_name(), task.exception())
