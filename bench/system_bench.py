"""System benchmarks: the services as real processes on a private redis-server.

Three sections, each a `report.Section`:

- latency: one WebSocket exchange through gateway -> responder over Redis,
  against the same responder code called in this process, plus how long an
  exchange takes to reach the archive;
- throughput: many closed-loop WebSocket sessions against one replica of each
  service, with the CPU of every process, so the bottleneck is visible;
- sessions: 1,000 paced WebSocket sessions on one gateway, its latency and memory.

The model is bench.instant_llm (answers at once), so every millisecond measured
is the system's. Load comes from a separate process (bench.ws_load).
"""

import asyncio
import contextlib
import json
import logging
import os
import re
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs in the venv
import uvloop
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect

from bench.instant_llm import InstantProvider
from bench.report import Row, Section, Spread, fmt, percentile
from bench.ws_load import ClosedLoopPlan, LoadProcess, LoadResult, PacedPlan, Plan
from services.archiver.repository import Archive
from services.archiver.settings import ArchiverSettings
from services.responder.context import ContextStore
from services.responder.service import Responder
from services.responder.settings import ResponderSettings
from shared.events import UtteranceReceived
from tests.support.redis_server import local_redis
from tests.support.services import ServiceProcess, running

log = logging.getLogger("bench.system")

LLM_PROVIDER = "bench.instant_llm:InstantProvider"
# Archiver first (its consumer group must exist before exchanges flow), gateway last.
SERVICES = ["archiver", "responder", "gateway"]
MIB = 2**20
# Rows of the CPU table: the request's path first, then what drives and watches it.
CPU_ORDER = ("gateway", "responder", "archiver", "redis", "load generator", "bench")
MACHINE = "machine, all processes"
OTHERS = "machine, processes outside the bench"
STOLEN = "stolen by the hypervisor (steal)"
# The last line of a traceback: `package.module.SomeError: message`.
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b.*$")


@dataclass(frozen=True)
class Sizes:
    latency_n: int = 1000
    lag_n: int = 50
    warmup_n: int = 100
    throughput_sessions: int = 200
    throughput_warmup_s: float = 5.0
    throughput_s: float = 30.0
    ws_sessions: int = 1000
    ws_interval_s: float = 2.0
    ws_messages: int = 30  # per session: 60 s at one message every 2 s
    settle_s: float = 10.0


FULL = Sizes()
QUICK = Sizes(
    latency_n=150,
    lag_n=10,
    warmup_n=20,
    throughput_sessions=50,
    throughput_warmup_s=1.0,
    throughput_s=4.0,
    ws_sessions=200,
    ws_messages=3,
    settle_s=3.0,
)


# --- the stack ------------------------------------------------------------------


@dataclass
class Stack:
    redis_url: str
    db_path: Path
    services: dict[str, ServiceProcess]
    redis_pid: int | None

    @property
    def ws_url(self) -> str:
        return self.services["gateway"].base_url.replace("http://", "ws://", 1)

    def pids(self) -> dict[str, int]:
        pids = {name: service.proc.pid for name, service in self.services.items()}
        if self.redis_pid is not None:
            pids["redis"] = self.redis_pid
        return pids

    def log_problems(self) -> list[str]:
        """Notes for service logs that hold errors: a run with them is suspect.

        Each names the exceptions behind the errors, counted, since the client
        only ever sees `internal`.
        """
        notes = []
        for name, service in self.services.items():
            lines = service.logs().splitlines()
            errors = [line for line in lines if " ERROR " in line or " CRITICAL " in line]
            if not errors:
                continue
            causes = Counter(line[:120] for line in lines if EXCEPTION_LINE.match(line))
            named = "; ".join(f"{count} x `{cause}`" for cause, count in causes.most_common(3))
            notes.append(f"{name} logged {len(errors)} errors" + (f": {named}" if named else ""))
        return notes


def service_env(redis_url: str, db_path: Path) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "LLM_PROVIDER": LLM_PROVIDER,
        "DATABASE_URL": f"sqlite:///{db_path}",
        "REPLY_TIMEOUT": "30",
        "LOG_LEVEL": "WARNING",
    }


def redis_pid(url: str) -> int | None:
    """The redis-server child local_redis() started (it does not expose its process)."""
    port = url.rsplit(":", 1)[1].split("/", 1)[0]
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if "redis-server" in child.name() and port in " ".join(child.cmdline()):
                return int(child.pid)
    return None


@contextlib.contextmanager
def open_stack(workdir: Path, extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    """redis-server plus one replica of each service; all stopped on the way out."""
    db_path = workdir / "archive.db"
    with local_redis() as server:
        env = {**service_env(server.url, db_path), **(extra_env or {})}
        with running(SERVICES, env, workdir) as services:
            yield Stack(server.url, db_path, services, redis_pid(server.url))


# --- sampling the processes ---------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic()
    cpu: dict[str, float]  # % of one core since the previous sample
    rss: dict[str, int]
    machine_cpu: float  # % of one core, summed over all cores (200 = both busy)
    # Time the hypervisor gave to other guests while this one wanted to run: on a
    # VM it makes the same work take longer, and shows nowhere else.
    stolen_cpu: float


@dataclass(frozen=True)
class CpuUse:
    mean: float
    peak: float


class Sampler:
    """CPU and RSS of named processes, sampled by a thread of this process."""

    def __init__(self, pids: dict[str, int], interval_s: float = 1.0) -> None:
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._procs["bench"] = psutil.Process(os.getpid())
        self._interval = interval_s
        self._samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def watch(self, name: str, pid: int) -> None:
        process = psutil.Process(pid)
        process.cpu_percent(None)  # the first call only sets the reference point
        self._procs[name] = process

    def __enter__(self) -> "Sampler":
        for process in self._procs.values():
            process.cpu_percent(None)
        psutil.cpu_percent(None)
        psutil.cpu_times_percent(None)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        cores = psutil.cpu_count() or 1
        while not self._stop.wait(self._interval):
            cpu, rss = {}, {}
            for name, process in list(self._procs.items()):
                with contextlib.suppress(psutil.Error):
                    cpu[name] = process.cpu_percent(None)
                    rss[name] = process.memory_info().rss
            machine = psutil.cpu_percent(None) * cores
            stolen = getattr(psutil.cpu_times_percent(None), "steal", 0.0) * cores
            # cpu_percent counts stolen time as busy; the machine's own work excludes it.
            sample = Sample(time.monotonic(), cpu, rss, max(0.0, machine - stolen), stolen)
            self._samples.append(sample)

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in list(self._samples) if start <= s.at <= end]

    def cpu(self, start: float, end: float) -> dict[str, CpuUse]:
        samples = self.between(start, end)
        seen = {name for s in samples for name in s.cpu}
        names = sorted(seen, key=lambda n: (CPU_ORDER.index(n) if n in CPU_ORDER else 99, n))
        use = {}
        for name in names:
            values = [s.cpu[name] for s in samples if name in s.cpu]
            use[name] = CpuUse(sum(values) / len(values), max(values))
        machine = [s.machine_cpu for s in samples]
        if machine:
            use[MACHINE] = CpuUse(sum(machine) / len(machine), max(machine))
            # Anyone else's work on the machine (another benchmark, a test run) shows
            # here rather than silently in our numbers.
            others = [s.machine_cpu - sum(s.cpu.values()) for s in samples]
            use[OTHERS] = CpuUse(max(0.0, sum(others) / len(others)), max(0.0, *others))
            stolen = [s.stolen_cpu for s in samples]
            use[STOLEN] = CpuUse(sum(stolen) / len(stolen), max(stolen))
        return use

    def peak_rss(self, name: str, start: float, end: float) -> int:
        return max((s.rss.get(name, 0) for s in self.between(start, end)), default=0)


def error_notes(result: LoadResult) -> list[str]:
    if not result.error_replies and not result.error_samples:
        return []
    codes = ", ".join(f"`{code}` x {n}" for code, n in sorted(result.error_codes.items()))
    notes = [f"Error replies by code: {codes}."] if codes else []
    return notes + [f"Error sample: `{e}`" for e in result.error_samples]


def cpu_rows(use: dict[str, CpuUse]) -> list[Row]:
    return [
        Row(f"CPU {name} (mean / peak, % of one core)", f"{u.mean:.0f}% / {u.peak:.0f}%")
        for name, u in use.items()
    ]


def cpu_notes(use: dict[str, CpuUse], generator: str = "load generator") -> list[str]:
    """What the CPU numbers say about the bottleneck."""
    notes = []
    cores = psutil.cpu_count() or 1
    procs = {k: v for k, v in use.items() if k not in (MACHINE, OTHERS, STOLEN)}
    if procs:
        busiest, top = max(procs.items(), key=lambda item: item[1].mean)
        verdict = "single-threaded event loop saturated" if top.mean >= 90 else "not saturated"
        notes.append(f"Busiest process: {busiest} at {top.mean:.0f}% of a core ({verdict}).")
    machine, others = use.get(MACHINE), use.get(OTHERS)
    if machine is not None and machine.mean >= 0.9 * cores * 100:
        sharing = "redis, the services and the load generator share its cores"
        if others is not None and others.mean >= 10:
            sharing += ", with processes outside the bench"
        notes.append(
            f"The machine is CPU-bound: {machine.mean:.0f}% of {cores * 100}% in use; {sharing}."
        )
    if others is not None and others.mean >= 10:
        notes.append(
            f"**Processes outside the bench used {others.mean:.0f}% of a core** during the "
            "measurement: the numbers are lower than on a quiet machine."
        )
    stolen = use.get(STOLEN)
    if stolen is not None and stolen.mean >= 5:
        notes.append(
            f"**The hypervisor took {stolen.mean:.0f}% of a core (steal)**: the VM got less "
            "CPU than it asked for, so every process ran slower than on dedicated cores."
        )
    gen = use.get(generator)
    if gen is not None and gen.mean >= 90:
        notes.append("The load generator itself saturates a core: it limits the offered load.")
    return notes


# --- measurement helpers ------------------------------------------------------------


def ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


async def exchange(ws: ClientConnection, text: str) -> None:
    """One text message and its `response`; anything else is a failed benchmark."""
    await ws.send(json.dumps({"type": "text", "text": text}))
    while True:
        message = json.loads(await ws.recv())
        if message.get("type") == "response":
            return
        if message.get("type") == "error":
            raise RuntimeError(f"gateway answered {message}")


@contextlib.contextmanager
def read_only(db_path: Path) -> Iterator[sqlite3.Connection]:
    """The archive, opened so the bench can never write to it or lock out the archiver."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def archived_total(conn: sqlite3.Connection) -> int:
    # The trigger-kept counter: O(1), where count(*) would scan.
    row = conn.execute("SELECT total_captures FROM capture_stats WHERE id = 1").fetchone()
    return int(row[0]) if row else 0


async def wait_archived(conn: sqlite3.Connection, total: int, timeout: float) -> float | None:
    """monotonic() when the archive first holds `total` rows; None after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if archived_total(conn) >= total:
            return time.monotonic()
        await asyncio.sleep(0.02)
    return None


async def run_load(
    plan: Plan, sampler: Sampler, timeout: float, name: str = "load generator"
) -> LoadResult:
    load = LoadProcess(plan)
    try:
        sampler.watch(name, load.start())
        return await load.result(timeout)
    finally:
        load.stop()


# --- 1. added latency ---------------------------------------------------------------


@dataclass
class Latencies:
    baseline: list[float] = field(default_factory=list)
    baseline_archive: list[float] = field(default_factory=list)
    full: list[float] = field(default_factory=list)
    archive_lag: list[float] = field(default_factory=list)


def utterance(session_id: str, n: int) -> UtteranceReceived:
    return UtteranceReceived(
        session_id=session_id, source="websocket", text=f"baseline message {n} about learning"
    )


async def time_baseline(stack: Stack, sizes: Sizes, archive: Archive | None) -> list[float]:
    """Responder.answer (and save_many) in this process, on the stack's Redis."""
    settings = ResponderSettings(redis_url=stack.redis_url, llm_provider=LLM_PROVIDER)
    redis = Redis.from_url(stack.redis_url)
    store = ContextStore(
        redis, max_exchanges=settings.max_context_exchanges, ttl_s=settings.redis_ttl
    )
    responder = Responder(store, InstantProvider(settings), settings)
    session = f"baseline-{'archive' if archive else 'reply'}"
    timings = []
    try:
        for n in range(sizes.warmup_n + sizes.latency_n):
            event = utterance(session, n)
            start = time.perf_counter()
            _, completed = await responder.answer(event)
            if archive is not None:
                await archive.save_many([completed])
            if n >= sizes.warmup_n:
                timings.append(ms_since(start))
    finally:
        await redis.aclose()
    return timings


async def time_full_path(stack: Stack, sizes: Sizes) -> list[float]:
    timings = []
    async with connect(f"{stack.ws_url}/ws/latency-full") as ws:
        for n in range(sizes.warmup_n + sizes.latency_n):
            start = time.perf_counter()
            await exchange(ws, f"full path message {n} about learning")
            if n >= sizes.warmup_n:
                timings.append(ms_since(start))
    return timings


async def time_archive_lag(stack: Stack, sizes: Sizes) -> list[float]:
    """Reply received -> row visible in the SQLite file, polled every 0.5 ms."""
    session = "latency-archive"
    lags = []
    query = "SELECT 1 FROM captures WHERE session_id = ? AND user_text = ?"
    with read_only(stack.db_path) as db:
        async with connect(f"{stack.ws_url}/ws/{session}") as ws:
            for n in range(sizes.lag_n):
                text = f"archive lag message {n} about learning"
                await exchange(ws, text)
                replied = time.perf_counter()
                deadline = replied + 30
                while db.execute(query, (session, text)).fetchone() is None:
                    if time.perf_counter() > deadline:
                        raise RuntimeError(f"exchange {n} not archived within 30 s")
                    await asyncio.sleep(0.0005)
                lags.append(ms_since(replied))
                await asyncio.sleep(0.01)  # keep samples independent of each other
    return lags


async def measure_latencies(stack: Stack, sizes: Sizes, workdir: Path) -> Latencies:
    result = Latencies()
    result.baseline = await time_baseline(stack, sizes, None)
    settings = ArchiverSettings(database_url=f"sqlite:///{workdir / 'baseline.db'}")
    async with Archive.from_settings(settings) as archive:
        result.baseline_archive = await time_baseline(stack, sizes, archive)
    result.full = await time_full_path(stack, sizes)
    result.archive_lag = await time_archive_lag(stack, sizes)
    return result


def latency_section(lat: Latencies, notes: list[str]) -> Section:
    base, with_archive = Spread.of(lat.baseline), Spread.of(lat.baseline_archive)
    full, lag = Spread.of(lat.full), Spread.of(lat.archive_lag)
    added_median, added_p95 = full.median - base.median, full.p95 - base.p95
    rows = [
        Row(f"baseline in-process `Responder.answer` (n={base.count}), median / p95",
            f"{fmt(base.median)} / {fmt(base.p95)} ms"),
        Row("baseline + `Archive.save_many([exchange])`, median / p95",
            f"{fmt(with_archive.median)} / {fmt(with_archive.p95)} ms"),
        Row(f"full path WebSocket send → response (n={full.count}), median / p95",
            f"{fmt(full.median)} / {fmt(full.p95)} ms"),
        Row("added (full - baseline), median", f"{fmt(added_median)} ms", "≤ 5 ms",
            added_median <= 5),
        Row("added (full - baseline), p95", f"{fmt(added_p95)} ms", "≤ 15 ms", added_p95 <= 15),
        Row(f"reply → archived (n={lag.count}), median / p95",
            f"{fmt(lag.median)} / {fmt(lag.p95)} ms"),
    ]  # fmt: skip
    notes = [
        "Added = full path minus the reply-path baseline (the reply does not wait for the "
        "archive). Full path includes the client's own JSON and WebSocket framing, one "
        "sequential client, no other load.",
        *notes,
    ]
    return Section("latency", "1. Added latency of the service split", rows, notes)


# --- 2. sustained throughput -----------------------------------------------------------


@dataclass
class Throughput:
    result: LoadResult
    archived_at: float | None
    archived_rows: int
    cpu: dict[str, CpuUse]


async def measure_throughput(stack: Stack, sizes: Sizes) -> Throughput:
    plan = ClosedLoopPlan(
        stack.ws_url,
        sessions=sizes.throughput_sessions,
        warmup_s=sizes.throughput_warmup_s,
        duration_s=sizes.throughput_s,
        prefix="throughput",
    )
    with read_only(stack.db_path) as db, Sampler(stack.pids()) as sampler:
        before = archived_total(db)
        budget = 120 + sizes.throughput_warmup_s + sizes.throughput_s
        result = await run_load(plan, sampler, budget)
        archived_at = await wait_archived(db, before + result.answered, timeout=120)
        rows = archived_total(db) - before
        cpu = sampler.cpu(result.window_start, result.window_end)
    return Throughput(result, archived_at, rows, cpu)


def throughput_section(t: Throughput, sizes: Sizes, notes: list[str]) -> Section:
    r = t.result
    window = r.window_end - r.window_start
    answered_rate = r.window_answered / window if window > 0 else 0.0
    archived_rate = (
        r.answered / (t.archived_at - r.connected_at) if t.archived_at is not None else 0.0
    )
    latency = Spread.of(r.window_latencies_ms)
    failures = r.error_replies + r.no_reply + r.failed_sessions + r.connect_failures
    rows = [
        Row("concurrent sessions (closed loop)", f"{r.connected} of {sizes.throughput_sessions}"),
        Row("measured window (after warm-up)",
            f"{window:.1f} s after {sizes.throughput_warmup_s:.0f} s"),
        Row("exchanges/s answered (window)", f"{answered_rate:,.0f}/s", "≥ 1,000/s",
            answered_rate >= 1000),
        Row("exchanges/s answered and archived", f"{archived_rate:,.0f}/s", "≥ 1,000/s",
            archived_rate >= 1000),
        Row("exchanges answered / archived (whole run)", f"{r.answered:,} / {t.archived_rows:,}",
            "equal", t.archived_rows == r.answered),
        Row("error replies / no reply / sessions with a failure",
            f"{r.error_replies} / {r.no_reply} / {r.failed_sessions + r.connect_failures}", "0",
            failures == 0),
        Row("latency under load, p50 / p95",
            f"{fmt(latency.median)} / {fmt(latency.p95)} ms"),
        *cpu_rows(t.cpu),
    ]  # fmt: skip
    notes = [
        "Answered and archived = every exchange of the run (warm-up included) / time from "
        "the first message to the last row committed"
        + ("" if t.archived_at else "; **the archive never caught up within 120 s**")
        + ".",
        *cpu_notes(t.cpu),
        *error_notes(r),
        *notes,
    ]
    return Section("throughput", "2. Sustained throughput, one replica each", rows, notes)


# --- 3. 1,000 concurrent sessions ---------------------------------------------------


@dataclass
class Sessions:
    result: LoadResult
    rss_before: int
    rss_peak: int
    rss_after: int
    cpu: dict[str, CpuUse]
    # A second, shorter round: RSS that stays flat here is memory the allocator
    # kept for reuse; RSS that grows again is a per-session leak.
    rss_after_again: int
    again: LoadResult


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


async def warm_up_gateway(stack: Stack, sampler: Sampler) -> None:
    """A few sessions first, so one-time costs (imports, caches) are not counted as
    memory the 1,000 sessions failed to give back."""
    plan = ClosedLoopPlan(stack.ws_url, sessions=20, warmup_s=0, duration_s=2, prefix="warm")
    await run_load(plan, sampler, timeout=60, name="warm-up generator")


def paced_plan(stack: Stack, sizes: Sizes, messages: int, prefix: str) -> PacedPlan:
    return PacedPlan(
        stack.ws_url,
        sessions=sizes.ws_sessions,
        interval_s=sizes.ws_interval_s,
        messages=messages,
        prefix=prefix,
    )


async def measure_sessions(stack: Stack, sizes: Sizes) -> Sessions:
    gateway = stack.services["gateway"].proc.pid
    budget = 120 + sizes.ws_messages * sizes.ws_interval_s
    with Sampler(stack.pids(), interval_s=0.25) as sampler:
        await warm_up_gateway(stack, sampler)
        await asyncio.sleep(2)
        rss_before = rss(gateway)
        started = time.monotonic()
        plan = paced_plan(stack, sizes, sizes.ws_messages, "sessions")
        result = await run_load(plan, sampler, budget)
        await asyncio.sleep(sizes.settle_s)
        rss_after = rss(gateway)
        peak = max(sampler.peak_rss("gateway", started, result.closed_at), rss_before)
        cpu = sampler.cpu(result.window_start, result.window_end)
        log.info("second round of %d sessions (leak check)", sizes.ws_sessions)
        again = await run_load(paced_plan(stack, sizes, 2, "again"), sampler, budget)
        await asyncio.sleep(sizes.settle_s)
        rss_again = rss(gateway)
    return Sessions(result, rss_before, peak, rss_after, cpu, rss_again, again)


def memory_returned(s: Sessions) -> bool:
    """At most 10 % of the growth (or 2 MiB, whichever is larger) still held."""
    kept = s.rss_after - s.rss_before
    return kept <= max(2 * MIB, 0.1 * (s.rss_peak - s.rss_before))


def again_verdict(s: Sessions) -> str:
    growth = max(1, s.rss_peak - s.rss_before)
    extra = s.rss_after_again - s.rss_after
    share = 100 * extra / growth
    # Sessions that leaked their whole state would add about the first round's growth.
    reading = "freed memory is mostly reused" if share <= 50 else "suspect per-session state kept"
    failures = s.again.failed_sessions + s.again.connect_failures + s.again.error_replies
    return (
        f"RSS {extra / MIB:+.1f} MiB after it ({share:.0f} % of the first round's growth of "
        f"{growth / MIB:.1f} MiB; a leak of every session's state would be about 100 %): "
        f"{reading}." + (f" {failures} failures in that round." if failures else "")
    )


def sessions_section(s: Sessions, sizes: Sizes, notes: list[str]) -> Section:
    r = s.result
    latency = r.window_latencies_ms
    p95 = percentile(latency, 95)
    dropped = r.failed_sessions + r.connect_failures
    rows = [
        Row("sessions connected", f"{r.connected:,} of {sizes.ws_sessions:,}", "all",
            r.connected == sizes.ws_sessions),
        Row("messages sent / answered", f"{r.sent:,} / {r.answered:,}"),
        Row("reply latency p50 / p95 / max",
            f"{fmt(percentile(latency, 50))} / {fmt(p95)} / {fmt(max(latency, default=0))} ms"),
        Row("reply latency p95", f"{fmt(p95)} ms", "≤ 100 ms", p95 <= 100),
        Row("dropped sessions (closed, error, or no reply)", f"{dropped}", "0", dropped == 0),
        Row("messages with an error reply / with no reply", f"{r.error_replies} / {r.no_reply}",
            "0", r.error_replies == 0 and r.no_reply == 0),
        Row("gateway RSS before connecting", f"{s.rss_before / MIB:.1f} MiB"),
        Row("gateway RSS peak", f"{s.rss_peak / MIB:.1f} MiB"),
        Row(f"gateway RSS {sizes.settle_s:.0f} s after all closed",
            f"{s.rss_after / MIB:.1f} MiB", "back to start", memory_returned(s)),
        Row(f"gateway RSS after a second round of {sizes.ws_sessions:,} sessions (leak check)",
            f"{s.rss_after_again / MIB:.1f} MiB"),
        *cpu_rows(s.cpu),
    ]  # fmt: skip
    notes = [
        f"{sizes.ws_sessions} sessions opened 100 per 0.5 s, then one message every "
        f"{sizes.ws_interval_s:g} s each, or as soon as a slower reply arrives (no catch-up "
        "bursts; starts spread over one interval), "
        f"{sizes.ws_messages} messages per session: an offered load of "
        f"{sizes.ws_sessions / sizes.ws_interval_s:,.0f} exchanges/s (compare with section 2). "
        "Gateway warmed up with 20 sessions first. 'Back to start' allows 10 % of the growth "
        "(at least 2 MiB) to remain.",
        f"Leak check: the same sessions connect again, 2 messages each; {again_verdict(s)}",
        *cpu_notes(s.cpu),
        *error_notes(r),
        *notes,
    ]
    title = f"3. {sizes.ws_sessions:,} concurrent WebSocket sessions on one gateway"
    return Section("sessions", title, rows, notes)


# --- entry points ------------------------------------------------------------------


def _runner() -> asyncio.Runner:
    # The services run on uvloop (uvicorn's default when installed): so does the baseline.
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def run_system(sizes: Sizes) -> list[Section]:
    """Sections 1 and 2, on one stack."""
    with tempfile.TemporaryDirectory(prefix="bench-system-") as tmp:
        workdir = Path(tmp)
        with open_stack(workdir) as stack, _runner() as runner:
            log.info("stack up: %s", stack.pids())
            latencies = runner.run(measure_latencies(stack, sizes, workdir))
            latency_problems = stack.log_problems()
            log.info("latency measured; throughput with %d sessions", sizes.throughput_sessions)
            throughput = runner.run(measure_throughput(stack, sizes))
            problems = stack.log_problems()
    return [
        latency_section(latencies, latency_problems),
        throughput_section(throughput, sizes, problems),
    ]


def run_ws(sizes: Sizes) -> list[Section]:
    """Section 3, on a stack of its own so the gateway's memory starts clean."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-ws-") as tmp,
        open_stack(Path(tmp)) as stack,
        _runner() as runner,
    ):
        log.info("stack up: %s; %d sessions", stack.pids(), sizes.ws_sessions)
        sessions = runner.run(measure_sessions(stack, sizes))
        problems = stack.log_problems()
    return [sessions_section(sessions, sizes, problems)]
