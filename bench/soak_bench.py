"""Soak (hardening): many WebSocket sessions for a minute, then as many again;
every message answered and archived once, and no service holding more memory
after the second round than after the first.

    python -m bench --only soak [--sessions 200] [--seconds 60] [--quick]

Archiver, responder, transcriber and gateway run as processes (`python -m
services.<name>`) on a private redis-server, with a fresh SQLite archive. The
model is bench.fast_llm_server --echo, an OpenAI-compatible server in a process
of its own that answers at once and repeats the message, reached through the
responder's `openai` provider: every answer says which message it answers. The
messages are text, so the transcriber only idles (its memory is still checked).

A round: `sessions` WebSocket sessions open (100 per 0.5 s); for `seconds` each
sends a text message of its own, waits for its `response`, pauses THINK_S times
0.5 to 1.5 (drawn anew each time; the first pause spreads the starts) and sends
the next. A message sent before the time is up is still waited for. Each message
ends answered (with its echo), with an error reply (its code), with no answer
within REPLY_TIMEOUT_S, with the connection dropped, or with the answer to
another message. After the round every connection is closed, the archive is
waited for (every answered message in it, then no new capture for SETTLE_S),
and the memory of every process taken: RSS and USS, each the median of
MEMORY_SAMPLES. The second round is the same with new sessions and messages.

The sessions run in the bench process (`bench` in the CPU rows): the memory is
measured between rounds, when none is open, so nothing needs this process's
event loop then; a load process of its own (bench.ws_load) would only add a
copy of every message's record to send back.
"""

import asyncio
import contextlib
import json
import logging
import math
import random
import sqlite3
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil  # type: ignore[import-untyped]  # no stubs in the venv
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, WebSocketException

from bench.report import Row, Section, fmt, spread_row
from bench.stream_bench import fast_llm
from bench.system_bench import (
    MACHINE,
    MIB,
    OTHERS,
    STOLEN,
    CpuUse,
    Sampler,
    Stack,
    _runner,
    archived_total,
    cpu_notes,
    read_only,
    redis_pid,
    service_env,
    wait_archived,
)
from bench.ws_load import LoadResult, PacedPlan, close_all, open_sessions
from tests.support.redis_server import local_redis
from tests.support.services import running

log = logging.getLogger("bench.soak")

# Archiver first (its consumer group must exist before exchanges flow), gateway last.
STACK = ["archiver", "responder", "transcriber", "gateway"]
ROUNDS = (1, 2)
# The mean pause between an answer and the next message. The responder's one core
# passes ~120 messages/s through the `openai` provider here (2 cores; 20 sessions
# without pauses); with 200 sessions for 20 s, measured: 0.5 s and 1 s saturate it
# (~115/s and ~90/s answered, median reply 1.1 s: messages queue), 1.5 s gives
# ~110/s at 80 % of its core (median 50-120 ms, p95 230-340 ms, at the knee),
# 2 s ~85/s at 70 % (median 45 ms, p95 140 ms, the machine 64 % busy): loaded,
# not saturated, with room for whatever else runs on the machine.
THINK_S = 2.0
# Above the gateway's REPLY_TIMEOUT (30 s): its own `timeout` error comes first.
REPLY_TIMEOUT_S = 40.0
# The archive has settled once it holds every answered message and then gets no
# new capture for SETTLE_S; a round whose archive never does is reported.
ARCHIVE_TIMEOUT_S = 120.0
SETTLE_S = 5.0
# An idle process's RSS still moves (the collector, the allocator keeping or
# returning arenas, the supervisors' timers): the median of several readings.
MEMORY_SAMPLES = 5
MEMORY_INTERVAL_S = 1.0
# The target is "no higher"; growth up to this much is taken for noise.
GROWTH_ALLOWED = 0.10
# Processes shown in the memory table but not checked: Redis keeps every
# session's context for REDIS_TTL (30 min), so 200 more sessions take more.
NOT_SERVICES = ("redis", "model server")

Outcome = Literal["answered", "error", "no answer", "dropped", "wrong answer"]


@dataclass(frozen=True)
class Soak:
    sessions: int = 200
    seconds: float = 60.0
    think_s: float = THINK_S


FULL = Soak()
QUICK = Soak(sessions=50, seconds=15.0)


@dataclass
class Message:
    text: str
    outcome: Outcome = "no answer"
    code: str = ""  # the error reply's code, or the exception that dropped the connection
    latency_s: float = math.nan


@dataclass(frozen=True)
class Memory:
    rss: float
    uss: float | None  # None where /proc/<pid>/smaps cannot be read


@dataclass
class Round:
    number: int
    connected: int
    connect_failures: int
    connect_errors: list[str]  # the first few
    messages: list[Message]
    talk_s: float  # sessions started -> every session done (its last answer in)
    settled_s: float | None  # round over -> archive settled; None if it never did
    # The SQLite file and its WAL, once settled: until a checkpoint the new pages
    # are in the WAL, which then keeps its size.
    archive_bytes: tuple[int, int]
    cpu: dict[str, CpuUse]
    memory: dict[str, Memory]

    def count(self, outcome: Outcome) -> int:
        return sum(m.outcome == outcome for m in self.messages)

    def answered(self) -> list[Message]:
        return [m for m in self.messages if m.outcome == "answered"]


# --- one session ------------------------------------------------------------------


async def next_answer(ws: ClientConnection) -> dict[str, Any]:
    """The next `response` or `error`; a pong or anything else is not the answer."""
    while True:
        message: dict[str, Any] = json.loads(await ws.recv())
        if message.get("type") in ("response", "error"):
            return message


async def ask(ws: ClientConnection, message: Message) -> bool:
    """Send one message and record how it ended; False if the session cannot go on."""
    sent_at = time.monotonic()
    try:
        await ws.send(json.dumps({"type": "text", "text": message.text}))
        answer = await asyncio.wait_for(next_answer(ws), REPLY_TIMEOUT_S)
    except TimeoutError:
        # A late answer would arrive where the next message's is awaited.
        message.outcome = "no answer"
        return False
    except (ConnectionClosed, WebSocketException, OSError) as exc:
        message.outcome, message.code = "dropped", type(exc).__name__
        return False
    message.latency_s = time.monotonic() - sent_at
    if answer["type"] == "error":
        # The connection stays usable after an error reply: the session goes on.
        message.outcome, message.code = "error", str(answer.get("code"))
        return True
    echoed = answer.get("user_text") == message.text and message.text in str(
        answer.get("agent_text")
    )
    message.outcome = "answered" if echoed else "wrong answer"
    # Crossed replies would make every later answer of this session suspect.
    return echoed


async def converse(
    ws: ClientConnection,
    session_id: str,
    deadline: float,
    think_s: float,
    rng: random.Random,
    messages: list[Message],
) -> None:
    # The first pause spreads the sessions' starts, so they do not all send at once.
    pause = rng.uniform(0, think_s)
    n = 0
    # Nothing is sent after the deadline: a pause that would end past it ends the
    # session at once, so the round ends with its last answer, not an idle tail.
    while time.monotonic() + pause < deadline:
        await asyncio.sleep(pause)
        n += 1
        message = Message(f"{session_id} message {n} about learning")
        messages.append(message)
        if not await ask(ws, message):
            return
        pause = think_s * rng.uniform(0.5, 1.5)


# --- a round ----------------------------------------------------------------------


async def settle(db: sqlite3.Connection, at_least: int) -> float | None:
    """Seconds until the archive holds `at_least` captures and then gets no new one
    for SETTLE_S (counted to its last change); None if it never holds them."""
    start = time.monotonic()
    if await wait_archived(db, at_least, ARCHIVE_TIMEOUT_S) is None:
        return None
    count, changed = archived_total(db), time.monotonic()
    while time.monotonic() - changed < SETTLE_S:
        await asyncio.sleep(0.2)
        if (now := archived_total(db)) != count:
            count, changed = now, time.monotonic()
    return changed - start


def memory_of(pid: int) -> Memory:
    process = psutil.Process(pid)
    try:
        # USS (memory only this process holds) needs /proc/<pid>/smaps.
        full = process.memory_full_info()
    except psutil.AccessDenied:
        return Memory(float(process.memory_info().rss), None)
    return Memory(float(full.rss), float(full.uss))


async def measure_memory(pids: dict[str, int]) -> dict[str, Memory]:
    samples: dict[str, list[Memory]] = {name: [] for name in pids}
    for n in range(MEMORY_SAMPLES):
        if n:
            await asyncio.sleep(MEMORY_INTERVAL_S)
        for name, pid in pids.items():
            samples[name].append(memory_of(pid))
    medians = {}
    for name, taken in samples.items():
        uss = [m.uss for m in taken if m.uss is not None]
        rss = statistics.median(m.rss for m in taken)
        medians[name] = Memory(rss, statistics.median(uss) if len(uss) == len(taken) else None)
    return medians


async def run_round(
    stack: Stack, soak: Soak, number: int, pids: dict[str, int], db: sqlite3.Connection
) -> Round:
    # Only the plan's URL, sessions, prefix and opening pace are used: the sessions
    # talk as `converse` says.
    plan = PacedPlan(
        stack.ws_url,
        sessions=soak.sessions,
        interval_s=soak.think_s,
        messages=0,
        prefix=f"soak{number}",
        reply_timeout_s=REPLY_TIMEOUT_S,
    )
    opening = LoadResult()
    archived_before = archived_total(db)
    rng = random.Random(number)  # the same pauses at every run of the bench
    messages: list[Message] = []
    with Sampler(pids) as sampler:
        sessions = await open_sessions(plan, opening)
        started = time.monotonic()
        deadline = started + soak.seconds
        try:
            await asyncio.gather(
                *(
                    converse(s.ws, s.session_id, deadline, soak.think_s, rng, messages)
                    for s in sessions
                )
            )
            talked = time.monotonic()
        finally:
            await close_all(sessions)
        cpu = sampler.cpu(started, talked)
    answered = sum(m.outcome == "answered" for m in messages)
    log.info("round %d: %d of %d messages answered", number, answered, len(messages))
    settled = await settle(db, archived_before + answered)
    wal = stack.db_path.with_name(stack.db_path.name + "-wal")
    archive_bytes = (stack.db_path.stat().st_size, wal.stat().st_size if wal.exists() else 0)
    memory = await measure_memory(pids)
    rss = ", ".join(f"{name} {m.rss / MIB:.1f} MiB" for name, m in memory.items())
    log.info("round %d: RSS %s", number, rss)
    return Round(
        number=number,
        connected=opening.connected,
        connect_failures=opening.connect_failures,
        connect_errors=opening.error_samples,
        messages=messages,
        talk_s=talked - started,
        settled_s=settled,
        archive_bytes=archive_bytes,
        cpu=cpu,
        memory=memory,
    )


# --- the stack --------------------------------------------------------------------


def model_server_pid(url: str) -> int:
    """The bench.fast_llm_server child serving `url` (fast_llm yields only the URL)."""
    port = url.rsplit(":", 1)[1].split("/", 1)[0]
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if "bench.fast_llm_server" in child.cmdline() and port in child.cmdline():
                return int(child.pid)
    raise RuntimeError(f"no bench.fast_llm_server process for {url}")


def model_env(url: str) -> dict[str, str]:
    return {
        "LLM_PROVIDER": "openai",
        "LLM_BASE_URL": url,
        # A failed call shows as an error reply, not hidden by a retry.
        "LLM_MAX_RETRIES": "0",
        # Never called (text only): keeps the transcriber off the embedded Whisper.
        "STT_PROVIDER": "openai",
        "OPENAI_BASE_URL": url,
        "OPENAI_API_KEY": "bench-not-needed",
    }


@contextlib.contextmanager
def soak_stack(workdir: Path) -> Iterator[tuple[Stack, dict[str, int]]]:
    """The model server, redis-server and the four services, a fresh archive; every
    process to watch by name. All stopped on the way out."""
    db_path = workdir / "archive.db"
    with fast_llm(echo=True) as url, local_redis() as server:
        env = {**service_env(server.url, db_path), **model_env(url)}
        with running(STACK, env, workdir) as services:
            stack = Stack(server.url, db_path, services, redis_pid(server.url))
            yield stack, {**stack.pids(), "model server": model_server_pid(url)}


async def soak_rounds(stack: Stack, soak: Soak, pids: dict[str, int]) -> list[Round]:
    rounds = []
    with read_only(stack.db_path) as db:
        for number in ROUNDS:
            log.info("round %d: %d sessions for %g s", number, soak.sessions, soak.seconds)
            rounds.append(await run_round(stack, soak, number, pids, db))
    return rounds


def archive_counts(db_path: Path) -> Counter[str]:
    with read_only(db_path) as db:
        rows = db.execute("SELECT user_text, count(*) FROM captures GROUP BY user_text")
        return Counter({str(text): int(n) for text, n in rows})


# --- the section ------------------------------------------------------------------


def per_round(values: Sequence[float], digits: int = 0) -> str:
    """`round 1 / round 2` of a number each round gives."""
    return " / ".join(fmt(float(v), digits=digits) for v in values)


def growth(before: float, after: float) -> float:
    return after / before - 1 if before else math.nan


def grown(rounds: Sequence[Round]) -> dict[str, float]:
    """Services whose RSS after the last round is over GROWTH_ALLOWED above the first's."""
    first, last = rounds[0].memory, rounds[-1].memory
    changes = {name: growth(first[name].rss, last[name].rss) for name in first}
    return {
        name: change
        for name, change in changes.items()
        if name not in NOT_SERVICES and change > GROWTH_ALLOWED
    }


def mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / MIB:.1f} MiB"


def change(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return "n/a"
    return f"{after / before:.3f} ({growth(before, after):+.1%})"


def memory_table(rounds: Sequence[Round]) -> str:
    first, last = rounds[0].memory, rounds[-1].memory
    flagged = grown(rounds)
    lines = [
        "| process | RSS after round 1 | RSS after round 2 | ratio | USS after round 1 "
        "| USS after round 2 | ratio | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, a in first.items():
        b = last[name]
        if name in NOT_SERVICES:
            verdict = "not a service: not checked"
        elif name in flagged:
            verdict = f"**grew {flagged[name]:+.0%}**"
        else:
            verdict = "ok"
        lines.append(
            f"| {name} | {mib(a.rss)} | {mib(b.rss)} | {change(a.rss, b.rss)} | {mib(a.uss)} "
            f"| {mib(b.uss)} | {change(a.uss, b.uss)} | {verdict} |"
        )
    return "\n".join(lines)


def cpu_summary(use: dict[str, CpuUse]) -> str:
    procs = ", ".join(
        f"{name} {u.mean:.0f}" for name, u in use.items() if name not in (MACHINE, STOLEN, OTHERS)
    )
    machine = use.get(MACHINE)
    cores = psutil.cpu_count() or 1
    return procs + (f"; machine {machine.mean:.0f} of {cores * 100}" if machine else "")


def failure_notes(rounds: Sequence[Round]) -> list[str]:
    notes = []
    for r in rounds:
        if r.connect_failures:
            samples = "; ".join(f"`{e}`" for e in r.connect_errors)
            notes.append(
                f"Round {r.number}, sessions not connected: {r.connect_failures} ({samples})."
            )
        codes = Counter(
            f"{m.outcome} ({m.code})" if m.code else m.outcome
            for m in r.messages
            if m.outcome != "answered"
        )
        if codes:
            listed = ", ".join(f"{what} x {n}" for what, n in codes.most_common())
            notes.append(f"Round {r.number}, messages not answered: {listed}.")
    return notes


def soak_section(
    soak: Soak, rounds: Sequence[Round], archived: Counter[str], problems: list[str]
) -> Section:
    answered = [r.answered() for r in rounds]
    n_answered = [len(a) for a in answered]
    once = [sum(archived[m.text] == 1 for m in a) for a in answered]
    twice = [sum(archived[m.text] > 1 for m in a) for a in answered]
    missing = [sum(archived[m.text] == 0 for m in a) for a in answered]
    failures = sum(len(r.messages) for r in rounds) - sum(n_answered)
    sent = {m.text for r in rounds for m in r.messages}
    strangers = sum(n for text, n in archived.items() if text not in sent)
    unanswered_kept = sum(archived[m.text] for r in rounds for m in r.messages) - sum(
        archived[m.text] for a in answered for m in a
    )
    flagged = grown(rounds)
    rows = [
        Row("sessions connected (every row: round 1 / round 2)",
            f"{per_round([r.connected for r in rounds])} of {soak.sessions:,}", "all",
            all(r.connected == soak.sessions for r in rounds)),
        Row("messages sent", per_round([len(r.messages) for r in rounds])),
        Row("messages answered (with their echo)", per_round(n_answered), "all", failures == 0),
        Row(f"error replies / no answer in {REPLY_TIMEOUT_S:g} s / dropped / another "
            "message's answer",
            "; ".join(
                f"{r.count('error')} / {r.count('no answer')} / {r.count('dropped')} / "
                f"{r.count('wrong answer')}" for r in rounds
            ), "0", failures == 0),
        Row("messages answered per second",
            per_round([n / r.talk_s for n, r in zip(n_answered, rounds, strict=True)], 1)),
        *(spread_row(f"reply latency, round {r.number}", [m.latency_s for m in a], unit="ms",
                     digits=1) for r, a in zip(rounds, answered, strict=True)),
        Row("answered messages archived exactly once",
            f"{per_round(once)} of {per_round(n_answered)}", "all", once == n_answered),
        Row("answered messages archived twice or more / not at all",
            "; ".join(f"{t} / {m}" for t, m in zip(twice, missing, strict=True)), "0",
            sum(twice) + sum(missing) == 0),
        Row(f"archive settled after the round (all in, then {SETTLE_S:g} s unchanged)",
            " / ".join("never" if r.settled_s is None else fmt(r.settled_s, " s", 1)
                       for r in rounds)),
        Row("archive size after the round: file + WAL",
            " / ".join(f"{mib(r.archive_bytes[0])} + {mib(r.archive_bytes[1])}"
                       for r in rounds)),
        Row(f"services whose RSS after round 2 is > {GROWTH_ALLOWED:.0%} above round 1's",
            ", ".join(f"{name} {g:+.0%}" for name, g in flagged.items()) or "none",
            "none (target: no higher)", not flagged),
        *(Row(f"CPU round {r.number}, mean % of one core", cpu_summary(r.cpu)) for r in rounds),
    ]  # fmt: skip
    verdict = (
        "memory grew: " + ", ".join(f"{name} {g:+.0%}" for name, g in flagged.items())
        if flagged
        else f"no service's RSS grew more than {GROWTH_ALLOWED:.0%}"
    )
    notes = [
        f"{soak.sessions} sessions per round opened 100 per 0.5 s, each for {soak.seconds:g} s "
        f"sending a text message of its own, waiting for the response, pausing "
        f"{soak.think_s * 0.5:g} to {soak.think_s * 1.5:g} s and sending the next (at most "
        f"{soak.sessions / soak.think_s:,.0f} messages/s offered); round 2 the same with new "
        "sessions and messages, on the same processes. An answer counts if its user_text is "
        "the message and its agent_text echoes it.",
        "Archiver, responder, transcriber and gateway as processes on a private redis-server "
        "and a fresh SQLite archive; the model is bench.fast_llm_server --echo (its own "
        "process, answering at once) through the responder's `openai` provider; the "
        "transcriber only idles (text messages).",
        f"Memory after each round: once the archive has settled, the median of "
        f"{MEMORY_SAMPLES} readings {MEMORY_INTERVAL_S:g} s apart, with every session "
        f"closed. Result: {verdict}. The target is no higher; up to {GROWTH_ALLOWED:.0%} is "
        "taken for noise (allocator arenas kept, the garbage collector's timing), so a "
        "small leak shows only over more rounds. Redis is not checked: it keeps every "
        "session's context for REDIS_TTL, so round 2's sessions add to round 1's. The "
        "archiver's memory follows the archive's size: its writer's SQLite page cache "
        "(allocated as used, up to its cache_size) and its readers' mapping of the file hold "
        "more pages of a larger file.",
        f"Archive (`SELECT user_text, count(*) FROM captures GROUP BY user_text`, after both "
        f"rounds): {unanswered_kept} captures of messages not answered, {strangers} of "
        "texts never sent.",
        *failure_notes(rounds),
        *(f"Round {r.number}: {note}" for r in rounds for note in cpu_notes(r.cpu, "bench")),
        *problems,
    ]
    title = f"Soak: {soak.sessions:,} WebSocket sessions for {soak.seconds:g} s, twice"
    # Rendered here: the memory table has columns of its own, unlike the main table.
    body = Section("soak", title, rows).render().rstrip()
    bullets = "\n".join(f"- {note}" for note in notes)
    markdown = f"{body}\n\n{memory_table(rounds)}\n\n{bullets}\n"
    return Section("soak", title, rows, notes, markdown=markdown)


def run_soak(soak: Soak) -> list[Section]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp,
        soak_stack(Path(tmp)) as (stack, pids),
        _runner() as runner,
    ):
        log.info("stack up: %s", pids)
        rounds = runner.run(soak_rounds(stack, soak, pids))
        problems = stack.log_problems()
        archived = archive_counts(stack.db_path)
    return [soak_section(soak, rounds, archived, problems)]
