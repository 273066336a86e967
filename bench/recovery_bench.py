"""Recovery (issue 6, hardening): a backlog left by an outage, and Redis flushed
or restarted under running services.

Every service is a process (`python -m services.<name>`) on a private
`redis-server`; the model and speech-to-text are the OpenAI wire server in this
process, echoing each message, so a reply says which message it answers and the
server's request log counts the model calls.

- Backlog: an archiver and a gateway whose REPLY_TIMEOUT is 1 s, no responder.
  The utterances (200; quick: 40), sent at once over BACKLOG_SESSIONS sessions,
  are all answered 504; then a responder starts. Measured while it starts: the
  seconds from its start, and from its /health answering, until every utterance
  is archived, and the model calls made for them (none expected: the work
  expired with its asker).
- Recovery: archiver, responder, transcriber and gateway, warmed up with one
  answered message; then Redis is flushed (FLUSHALL, no persistence), restarted
  with AOF, or restarted with nothing on disk (stopped at least DOWN_S, and until
  every /health has said 503). From the moment the flush returns, or Redis
  answers again: the seconds until a message sent then (REST) is answered, sent
  again at once whenever it gets an error, and until every service's /health
  answers 200 and keeps doing so for STEADY_S. /health of every service is polled
  every HEALTH_POLL_S throughout. Each run (3 per case; quick: 1) has a fresh
  Redis and fresh services; the median of the runs is reported.

Reclaim and supervision keep their production defaults (RECLAIM_IDLE_MS 60 s,
RECLAIM_INTERVAL_S 5 s, SUPERVISE_INTERVAL_S 1 s, the Redis retry settings), and
REPLY_TIMEOUT its 30 s except on the backlog's gateway.
"""

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.report import Row, Section, fmt, percentile
from services.gateway.settings import GatewaySettings
from shared.settings import CommonSettings
from tests.support.redis_server import RedisProcess, restartable_redis
from tests.support.services import ServiceProcess, running, start_service
from tests.support.stack import archived, base_env, health
from tests.wire.openai_server import OpenAIWireServer

log = logging.getLogger("bench.recovery")

# Archiver first (its group must exist before exchanges flow), gateway last.
STACK = ["archiver", "responder", "transcriber", "gateway"]
BACKLOG_SESSIONS = 20
# The backlog's gateway gives up after this long: everything it sent expires.
IMPATIENT_REPLY_TIMEOUT_S = "1"
# A restart keeps Redis stopped at least this long, and until every /health has
# said 503 (a poll takes up to the 1 s of the broker's ping), at most DOWN_MAX_S.
DOWN_S = 1.0
DOWN_MAX_S = 15.0
HEALTH_POLL_S = 0.1
# /health counts as back once every service has answered 200 for this long.
STEADY_S = 2.0
# A recovery, or a drain, not done by then has failed.
GIVE_UP_S = 120.0
RETRY_PAUSE_S = 0.05
# The "within a few seconds" and "drains in seconds".
TARGET_S = 5.0


@dataclass(frozen=True)
class Disruption:
    name: str
    label: str
    appendonly: bool
    restart: bool


DISRUPTIONS = (
    Disruption("flush", "FLUSHALL (no persistence)", appendonly=False, restart=False),
    Disruption("restart-aof", "Redis restart with AOF", appendonly=True, restart=True),
    Disruption("restart-empty", "Redis restart, nothing on disk", appendonly=False, restart=True),
)


@dataclass(frozen=True)
class Drain:
    sent: int
    gave_up: int  # answered 504 by the impatient gateway
    archived_before: int
    archived_expired: int
    to_healthy_s: float  # responder start -> its /health answers
    to_drained_s: float  # responder start -> every utterance archived
    model_calls: int


@dataclass
class Recovery:
    answered_s: float
    healthy_s: float
    first_try: bool
    down_s: float  # how long Redis was stopped (0 for a flush)
    # Services whose /health said 503 while Redis was stopped (a restart), or
    # after the flush.
    said_503: set[str] = field(default_factory=set)
    tracebacks: list[str] = field(default_factory=list)


def stack_env(redis_url: str, llm: OpenAIWireServer, db: Path) -> dict[str, str]:
    """The test stack's settings without its short reclaim timings and reply
    deadline: what a deployment runs with."""
    env = base_env(redis_url, llm, db)
    for name in ("RECLAIM_IDLE_MS", "RECLAIM_INTERVAL_S", "REPLY_TIMEOUT"):
        del env[name]
    return env


def deployed_settings() -> str:
    """The defaults the measured behaviour depends on, as the notes state them."""
    common = CommonSettings.model_fields
    return (
        f"RECLAIM_IDLE_MS {common['reclaim_idle_ms'].default}, "
        f"RECLAIM_INTERVAL_S {common['reclaim_interval_s'].default:g}, "
        f"SUPERVISE_INTERVAL_S {common['supervise_interval_s'].default:g}, "
        f"REDIS_RETRIES {common['redis_retries'].default} backing off up to "
        f"{common['redis_retry_backoff_max'].default:g} s, "
        f"REPLY_TIMEOUT {GatewaySettings.model_fields['reply_timeout'].default:g} s "
        f"({IMPATIENT_REPLY_TIMEOUT_S} s on the backlog's gateway)"
    )


def model_calls(llm: OpenAIWireServer) -> int:
    return sum(r.path.endswith("/chat/completions") for r in list(llm.requests))


# --- the backlog ----------------------------------------------------------------


async def send_backlog(gateway: ServiceProcess, n: int) -> int:
    """Send `n` utterances at once; how many the gateway answered 504 (gave up)."""
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=60, limits=limits) as client:
        answers = await asyncio.gather(
            *(
                client.post(
                    "/api/conversation",
                    json={"session_id": f"backlog-{i % BACKLOG_SESSIONS}", "text": f"thought {i}"},
                )
                for i in range(n)
            )
        )
    return sum(a.status_code == 504 for a in answers)


def start_timed(name: str, env: Mapping[str, str], log_dir: Path) -> tuple[ServiceProcess, float]:
    """The service once its /health answers, and monotonic() at that moment."""
    service = start_service(name, env, log_dir)
    return service, time.monotonic()


async def drain(llm: OpenAIWireServer, env: dict[str, str], tmp: Path, n: int) -> Drain:
    db = Path(env["DATABASE_URL"].removeprefix("sqlite:///"))
    archiver = start_service("archiver", env, tmp)
    impatient = start_service("gateway", {**env, "REPLY_TIMEOUT": IMPATIENT_REPLY_TIMEOUT_S}, tmp)
    responder: ServiceProcess | None = None
    starting: asyncio.Task[tuple[ServiceProcess, float]] | None = None
    try:
        gave_up = await send_backlog(impatient, n)
        archived_before = len(archived(db))
        calls_before = model_calls(llm)
        log.info("backlog of %d sent (%d answered 504); starting a responder", n, gave_up)
        started = time.monotonic()
        # In a thread, so the archive is watched while the responder starts: it may
        # have drained the backlog before its /health first answers.
        starting = asyncio.create_task(asyncio.to_thread(start_timed, "responder", env, tmp))
        deadline = started + GIVE_UP_S
        while len(archived(db)) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"backlog: {len(archived(db))} of {n} archived in {GIVE_UP_S:g} s"
                )
            await asyncio.sleep(RETRY_PAUSE_S)
        drained = time.monotonic()
        responder, healthy = await starting
        expired = sum(meta.get("expired") is True for _, _, meta in archived(db))
    finally:
        if responder is None and starting is not None:
            # The drain failed: a responder that did start must not outlive the bench.
            with contextlib.suppress(Exception):
                responder, _ = await starting
        # Stopped before counting: any model call the responder had begun is counted.
        for service in (responder, impatient, archiver):
            if service is not None:
                service.stop()
    return Drain(
        sent=n,
        gave_up=gave_up,
        archived_before=archived_before,
        archived_expired=expired,
        to_healthy_s=healthy - started,
        to_drained_s=drained - started,
        model_calls=model_calls(llm) - calls_before,
    )


def run_drain(llm: OpenAIWireServer, n: int) -> Drain:
    with (
        tempfile.TemporaryDirectory(prefix="lva-recovery-bench-") as tmp,
        restartable_redis(appendonly=False) as server,
    ):
        env = stack_env(server.url, llm, Path(tmp) / "archive.db")
        return asyncio.run(drain(llm, env, Path(tmp), n))


# --- flush and restarts ---------------------------------------------------------


@dataclass
class HealthWatch:
    """/health of every service, polled together until stopped: (when the poll
    began, each service's status code, 0 for no answer)."""

    services: Sequence[ServiceProcess]
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            codes = await asyncio.gather(*(asyncio.to_thread(health, s) for s in self.services))
            self.samples.append(
                (began, {s.name: c for s, c in zip(self.services, codes, strict=True)})
            )
            await asyncio.sleep(HEALTH_POLL_S)

    def stop(self) -> None:
        self._stop.set()

    def healthy_since(self) -> float | None:
        """When the latest unbroken run of all-200 polls began; None if the latest
        poll was not all 200."""
        since: float | None = None
        for began, codes in self.samples:
            if all(code == 200 for code in codes.values()):
                since = began if since is None else since
            else:
                since = None
        return since

    async def steady(self, since: float) -> float:
        """Seconds from `since` until every /health has been 200 for STEADY_S."""
        deadline = since + GIVE_UP_S
        while True:
            healthy = self.healthy_since()
            if healthy is not None and self.samples[-1][0] - healthy >= STEADY_S:
                # A run that began before `since` was healthy at that moment already.
                return max(healthy - since, 0.0)
            if time.monotonic() > deadline:
                raise RuntimeError(f"/health not steadily 200 within {GIVE_UP_S:g} s")
            await asyncio.sleep(HEALTH_POLL_S)

    async def all_said_503(self, since: float, until: float) -> None:
        """Return once every service has said 503 since `since`, or at `until`."""
        names = {s.name for s in self.services}
        while True:
            if self.said_503(since, time.monotonic()) == names or time.monotonic() > until:
                return
            await asyncio.sleep(HEALTH_POLL_S)

    def said_503(self, start: float, end: float) -> set[str]:
        return {
            name
            for began, codes in self.samples
            if start <= began < end
            for name, code in codes.items()
            if code == 503
        }


async def answer(gateway: ServiceProcess, text: str, since: float) -> tuple[float, bool]:
    """Seconds from `since` until `text` is answered with its echo, and whether
    the first try was; a try that gets an error is followed at once by another."""
    deadline = since + GIVE_UP_S
    first = True
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=GIVE_UP_S) as client:
        while True:
            try:
                response = await client.post(
                    "/api/conversation", json={"session_id": "recovery", "text": text}
                )
                ok = response.status_code == 200 and text in response.json()["agent_text"]
            except httpx.HTTPError:
                ok = False
            if ok:
                return time.monotonic() - since, first
            if time.monotonic() > deadline:
                raise RuntimeError(f"{text!r}: not answered within {GIVE_UP_S:g} s")
            first = False
            await asyncio.sleep(RETRY_PAUSE_S)


async def disrupt(
    server: RedisProcess, services: dict[str, ServiceProcess], disruption: Disruption
) -> Recovery:
    gateway = services["gateway"]
    # Every pool then holds connections, which a restart breaks under them.
    await answer(gateway, "a first message", time.monotonic())
    watch = HealthWatch(list(services.values()))
    watching = asyncio.create_task(watch.run())
    try:
        await watch.steady(time.monotonic())
        # Redis calls go to threads: the health polls must go on meanwhile. Redis
        # refuses from the start of its shutdown, before stop() returns.
        began = time.monotonic()
        if disruption.restart:
            await asyncio.to_thread(server.stop)
            await asyncio.sleep(DOWN_S)
            await watch.all_said_503(began, began + DOWN_MAX_S)
            await asyncio.to_thread(server.start)
        else:
            await asyncio.to_thread(server.server().flush)
        back = time.monotonic()
        answered_s, first_try = await answer(gateway, f"right after the {disruption.name}", back)
        healthy_s = await watch.steady(back)
    finally:
        watch.stop()
        await watching
    if disruption.restart:
        down_s, said_503 = back - began, watch.said_503(began, back)
    else:
        # The groups vanish at once; a worker notices at its next read or check.
        down_s, said_503 = 0.0, watch.said_503(back, time.monotonic())
    return Recovery(answered_s, healthy_s, first_try, down_s, said_503)


def run_disruption(llm: OpenAIWireServer, disruption: Disruption) -> Recovery:
    with (
        tempfile.TemporaryDirectory(prefix="lva-recovery-bench-") as tmp,
        restartable_redis(appendonly=disruption.appendonly) as server,
    ):
        env = stack_env(server.url, llm, Path(tmp) / "archive.db")
        with running(STACK, env, Path(tmp)) as services:
            recovery = asyncio.run(disrupt(server, services, disruption))
            # A recovery that works by luck shows in the logs, if not in the times.
            recovery.tracebacks = [n for n, s in services.items() if "Traceback" in s.logs()]
    log.info(
        "%s: answered after %.2f s (first try: %s), /health 200 after %.2f s, 503 from %s",
        disruption.label,
        recovery.answered_s,
        recovery.first_try,
        recovery.healthy_s,
        sorted(recovery.said_503),
    )
    return recovery


# --- the section ----------------------------------------------------------------


def median_row(metric: str, seconds: Sequence[float]) -> Row:
    """The median of a few runs against TARGET_S, every run shown."""
    median = percentile(seconds, 50)
    runs = ", ".join(fmt(s) for s in seconds)
    return Row(
        f"{metric} (n={len(seconds)}), median",
        f"{fmt(median, ' s')}" + (f" (runs: {runs})" if len(seconds) > 1 else ""),
        f"≤ {TARGET_S:g} s",
        median <= TARGET_S,
    )


def count_row(metric: str, got: int, of: int, target: str = "all") -> Row:
    return Row(metric, f"{got} of {of}", target, got == of if target else None)


def drain_rows(d: Drain) -> list[Row]:
    from_healthy = d.to_drained_s - d.to_healthy_s
    return [
        count_row("backlog: utterances answered 504 by a gateway with a 1 s timeout", d.gave_up,
                  d.sent),
        count_row("archived before a responder ran", d.archived_before, d.sent, target=""),
        Row("responder start → its /health answers", fmt(d.to_healthy_s, " s")),
        Row(f"responder start → all {d.sent} archived", fmt(d.to_drained_s, " s")),
        Row(
            f"responder healthy → all {d.sent} archived",
            fmt(from_healthy, " s") if from_healthy >= 0 else "0 s (drained before it answered)",
            f"≤ {TARGET_S:g} s",
            from_healthy <= TARGET_S,
        ),
        count_row("archived marked expired (unanswered, nothing lost)", d.archived_expired,
                  d.sent),
        Row("model calls made for the backlog", f"{d.model_calls}", "0", d.model_calls == 0),
    ]  # fmt: skip


def recovery_rows(disruption: Disruption, runs: Sequence[Recovery]) -> list[Row]:
    since = "Redis back" if disruption.restart else "the flush"
    rows = [
        median_row(f"{disruption.label}: {since} → a message sent then answered",
                   [r.answered_s for r in runs]),
        count_row("  … answered at its first try", sum(r.first_try for r in runs), len(runs)),
        median_row(f"{disruption.label}: {since} → every /health 200",
                   [r.healthy_s for r in runs]),
    ]  # fmt: skip
    if disruption.restart:
        rows.append(
            count_row(
                "  … runs where every /health said 503 while Redis was down",
                sum(r.said_503 == set(STACK) for r in runs),
                len(runs),
            )
        )
    else:
        rows.append(
            count_row(
                "  … runs where a /health said 503 after the flush (a worker not yet back)",
                sum(bool(r.said_503) for r in runs),
                len(runs),
                target="",
            )
        )
    return rows


def run_recovery(quick: bool) -> list[Section]:
    n, repeats = (40, 1) if quick else (200, 3)
    with OpenAIWireServer() as llm:
        llm.echo = True
        log.info("backlog of %d expired utterances", n)
        backlog = run_drain(llm, n)
        recoveries = {d.name: [run_disruption(llm, d) for _ in range(repeats)] for d in DISRUPTIONS}
    rows = drain_rows(backlog)
    for disruption in DISRUPTIONS:
        rows += recovery_rows(disruption, recoveries[disruption.name])
    downs = [r.down_s for d in DISRUPTIONS if d.restart for r in recoveries[d.name]]
    notes = [
        f"Backlog: archiver and a gateway (REPLY_TIMEOUT {IMPATIENT_REPLY_TIMEOUT_S} s) as "
        f"processes on a private redis-server without persistence; {n} utterances sent at "
        f"once over {BACKLOG_SESSIONS} sessions (REST), then a responder started; the "
        "archive (SQLite) polled every 50 ms while it starts; model calls counted by the "
        "wire server.",
        f"Recovery: archiver, responder, transcriber and gateway as processes, on a fresh "
        f"private redis-server and fresh services for each run ({repeats} per case), one "
        "message answered first. A restart is a clean shutdown (AOF fsync every second "
        f"where on), Redis kept down at least {DOWN_S:g} s and until every /health had "
        f"said 503 ({fmt(min(downs))} to {fmt(max(downs))} s), then started. The message is "
        "sent (REST) as soon as the flush returns or Redis answers PING, again at once "
        f"after any error; /health of every service polled every {HEALTH_POLL_S:g} s, "
        f'"200" once all have answered 200 for {STEADY_S:g} s (timed from the first of '
        "those polls).",
        "Settings as deployed (their defaults): " + deployed_settings() + "; the model and "
        "speech-to-text are the OpenAI wire server in the bench process, echoing.",
    ]
    tracebacks = sorted({n for runs in recoveries.values() for r in runs for n in r.tracebacks})
    if tracebacks:
        notes.append(f"Tracebacks in the logs of: {', '.join(tracebacks)} (the run is suspect).")
    return [Section("recovery", "Recovery: a backlog after an outage, Redis flushed or restarted",
                    rows, notes)]  # fmt: skip
