"""What every FastStream worker runs besides its handlers, and how it is served.

A `Worker` owns the broker, the service's own Redis client, the supervisor of its
consumer groups and subscribers, a reclaimer per stream it reads, and `/health`
on HEALTH_PORT. A service's `app.py` adds its handlers to `worker.broker` and its
own start-up and shutdown steps to `worker.app(...)`.
"""

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence

import uvicorn
from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.asgi.types import Scope
from pydantic import BaseModel
from redis.asyncio import Redis

from shared import metrics, telemetry
from shared.broker import HEALTH_PING_TIMEOUT_S, make_broker, redis_client, wait_for_redis
from shared.delivery import Leases, Reclaimer
from shared.outbox import Outbox
from shared.process import attach_server, exit_code
from shared.settings import CommonSettings
from shared.supervision import Supervisor
from shared.tasks import cancel_all

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None]]
# A readiness check of a service's own: (ok, detail), detail a dict or a sentence.
ReadinessCheck = Callable[[], tuple[bool, dict[str, object] | str]]


class BackgroundTasks:
    """Long-running helpers of a worker (reclaimers, the supervisor), stopped with it."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            await factory()

        self._tasks.append(asyncio.create_task(run(), name=name))

    async def stop(self) -> None:
        await cancel_all(self._tasks, "background task")
        self._tasks.clear()


class Worker:
    def __init__(self, settings: CommonSettings, service: str) -> None:
        self.settings = settings
        self.service = service
        self.leases = Leases(max_hold_s=settings.max_hold_s)
        self.broker = make_broker(settings, service, middlewares=(self.leases.middleware(),))
        self.supervisor = Supervisor(self.broker, settings)
        self._outbox: Outbox | None = None
        self._redis: Redis | None = None
        self._background = BackgroundTasks()
        # Apart from the other helpers: it must stop before the broker does, or it
        # would start again a subscriber that the broker's shutdown has just stopped.
        self._supervising = BackgroundTasks()
        self._checks: dict[str, ReadinessCheck] = {}

    def run_in_background(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """A helper of the service's own that runs until the worker stops."""
        self._background.start(name, factory)

    async def publish(self, message: BaseModel, stream: str) -> None:
        """Publish `message` for another service, kept to publish again should Redis
        lose its data before that service reads it (shared.outbox)."""
        if self._outbox is None:
            raise RuntimeError(f"{self.service}: publishing before start-up")
        await self._outbox.publish(stream, message)

    async def _publish(self, stream: str, message: BaseModel) -> bytes:
        return await self.broker.publish(message, stream=stream, maxlen=self.settings.stream_maxlen)

    def add_check(self, name: str, check: ReadinessCheck) -> None:
        """Make `check` part of readiness: /health shows it under `checks.<name>`
        and is 503 while it is not ok. It is called on every request: a check
        that costs more than a look-up should report a result it keeps."""
        self._checks[name] = check

    def _run_checks(self) -> dict[str, dict[str, object]]:
        results: dict[str, dict[str, object]] = {}
        for name, check in self._checks.items():
            try:
                ok, detail = check()
            except Exception as exc:
                log.exception("readiness check %s failed", name)
                ok, detail = False, f"the check failed: {exc!r}"
            results[name] = {
                "ok": ok,
                **(detail if isinstance(detail, dict) else {"detail": detail}),
            }
        return results

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            raise RuntimeError(f"{self.service}: Redis is used before start-up")
        return self._redis

    async def _connect(self) -> None:
        await wait_for_redis(self.settings.redis_url, self.settings.redis_connect_timeout)
        self._redis = redis_client(self.settings)
        # Before the broker starts: its subscribers would create them at "$".
        await self.supervisor.ensure_groups(self._redis)
        self._outbox = Outbox(self._redis, self._publish, window_s=self.settings.flush_resend_s)
        await self._outbox.start()

    async def _started(self) -> None:
        for stream, group in self.supervisor.groups():
            reclaimer = Reclaimer(
                self.redis, self.settings, stream=stream, group=group, leases=self.leases
            )
            self._background.start(f"reclaim-{stream}", reclaimer.run)
        self._background.start("group-metrics", lambda: metrics.watch_groups(self.redis))
        if self._outbox is not None:
            self._background.start("outbox", self._outbox.run)
        self._supervising.start("supervise", self.supervisor.run)

    async def _close(self) -> None:
        await self._supervising.stop()
        await self._background.stop()
        if self._redis is not None:
            await self._redis.aclose()
        # In a thread: the exporter's last send may wait on a collector.
        await asyncio.to_thread(telemetry.shutdown_tracing)

    async def health(self) -> tuple[bool, dict[str, object]]:
        """Healthy only with the broker connected, every subscriber running, every
        group known to exist at a recent check, and every check of add_check ok."""
        broker_ok = await self.broker.ping(HEALTH_PING_TIMEOUT_S)
        subscriptions = self.supervisor.subscriptions()
        checks = self._run_checks()
        healthy = (
            broker_ok
            and self.supervisor.checking
            and all(s.healthy for s in subscriptions)
            and all(c["ok"] for c in checks.values())
        )
        body: dict[str, object] = {
            "status": "healthy" if healthy else "degraded",
            "service": self.service,
            "instance": self.settings.instance_id,
            "broker": "ok" if broker_ok else "unreachable",
            "subscribers": [
                {
                    "stream": s.stream,
                    "group": s.group,
                    "running": s.running,
                    "group_exists": s.group_exists,
                }
                for s in subscriptions
            ],
        }
        if checks:
            body["checks"] = checks
        return healthy, body

    def app(
        self, *, on_startup: Sequence[Hook] = (), after_shutdown: Sequence[Hook] = ()
    ) -> AsgiFastStream:
        """The ASGI app: Redis and the groups first, then the service's own start-up
        (models load before the first message is read), then the broker. At the end
        the broker stops first, letting handlers in flight finish, and only then are
        the service's models and clients released."""

        @get(include_in_schema=False)
        async def health(scope: Scope) -> AsgiResponse:
            healthy, body = await self.health()
            return AsgiResponse(
                json.dumps(body).encode(),
                200 if healthy else 503,
                headers={"content-type": "application/json"},
            )

        # Liveness: the process serves (a Redis outage is no reason to restart
        # it; readiness says so). Served only once start-up is done, so its
        # models are loaded and its database open: readiness is /health's check.
        @get(include_in_schema=False)
        async def live(scope: Scope) -> AsgiResponse:
            body = {"status": "alive", "service": self.service}
            return AsgiResponse(
                json.dumps(body).encode(), 200, headers={"content-type": "application/json"}
            )

        return AsgiFastStream(
            self.broker,
            # Ours, not FastStream's own colourised stderr logger: one format for all.
            logger=logging.getLogger(f"lva.{self.service}.app"),
            asgi_routes=[
                ("/health", health),
                ("/health/live", live),
                ("/health/ready", health),
                ("/metrics", metrics.asgi_app()),
            ],
            on_startup=[self._connect, *on_startup],
            after_startup=[self._started],
            on_shutdown=[self._supervising.stop],
            after_shutdown=[*after_shutdown, self._close],
        )


def serve(app: AsgiFastStream, settings: CommonSettings, port: int) -> None:
    """Run the worker until it is stopped; exit non-zero if it gave up by itself."""
    config = uvicorn.Config(app, host=settings.host, port=port, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    attach_server(server)
    server.run()
    if exit_code():
        sys.exit(exit_code())
