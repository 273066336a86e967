"""Running a FastStream worker: its broker plus a `/health` route on HEALTH_PORT."""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

import uvicorn
from faststream.asgi import AsgiFastStream, make_ping_asgi
from faststream.redis import RedisBroker

from shared.settings import CommonSettings

log = logging.getLogger(__name__)


def worker_app(
    broker: RedisBroker,
    *,
    on_startup: Sequence[Callable[[], Awaitable[None]]] = (),
    after_startup: Sequence[Callable[[], Awaitable[None]]] = (),
    on_shutdown: Sequence[Callable[[], Awaitable[None]]] = (),
) -> AsgiFastStream:
    return AsgiFastStream(
        broker,
        asgi_routes=[("/health", make_ping_asgi(broker, timeout=5.0))],
        on_startup=on_startup,
        after_startup=after_startup,
        on_shutdown=on_shutdown,
    )


def serve(app: AsgiFastStream, settings: CommonSettings, port: int) -> None:
    uvicorn.run(app, host=settings.host, port=port, log_config=None, lifespan="on")


class BackgroundTasks:
    """Long-running helpers of a worker (reclaimers), stopped with it."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            await factory()

        self._tasks.append(asyncio.create_task(run(), name=name))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
