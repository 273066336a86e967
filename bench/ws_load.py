"""WebSocket load generators, run in a process of their own.

The orchestrator (bench.system_bench) starts `LoadProcess` with a plan and keeps
its own event loop free for sampling CPU and memory; the generator's numbers
come back over a pipe when it is done. Two shapes of load:

- `ClosedLoopPlan`: every session sends its next message as soon as the reply to
  the previous one arrives (throughput);
- `PacedPlan`: every session sends one message every `interval_s` (or when a
  slower reply arrives), start times spread evenly over one interval (many
  idle-ish connections).

Timestamps are `time.monotonic()`, which on Linux is one clock for every
process, so the orchestrator can line them up with its own samples.
"""

import asyncio
import contextlib
import json
import multiprocessing
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException


@dataclass(frozen=True)
class Opening:
    """How connections are opened: in batches, so the listen backlog never overflows
    (a SYN storm would show up as 1 s / 3 s retransmit latencies, not as the gateway)."""

    batch: int = 100
    pause_s: float = 0.5


@dataclass(frozen=True)
class ClosedLoopPlan:
    base_url: str  # ws://host:port
    sessions: int
    warmup_s: float
    duration_s: float
    prefix: str = "load"
    opening: Opening = Opening()
    # Above the gateway's REPLY_TIMEOUT (30 s): its own `timeout` error comes first.
    reply_timeout_s: float = 40.0
    # Sessions ask for streamed replies (`?stream=1`): pieces, then the response.
    stream: bool = False


@dataclass(frozen=True)
class PacedPlan:
    base_url: str
    sessions: int
    interval_s: float
    messages: int  # per session
    prefix: str = "paced"
    opening: Opening = Opening()
    reply_timeout_s: float = 40.0
    stream: bool = False


Plan = ClosedLoopPlan | PacedPlan


@dataclass
class LoadResult:
    connected: int = 0
    connect_failures: int = 0
    sent: int = 0
    answered: int = 0
    # Closed loop: exchanges sent inside the measurement window; paced: all of them.
    window_latencies_ms: list[float] = field(default_factory=list)
    window_answered: int = 0
    error_replies: int = 0  # `error` messages, the gateway's own `timeout` included
    error_codes: dict[str, int] = field(default_factory=dict)
    no_reply: int = 0  # nothing at all within reply_timeout_s
    failed_sessions: int = 0  # connected, then got an error reply, a timeout, or closed
    error_samples: list[str] = field(default_factory=list)
    # Streamed replies: `delta` messages received in all.
    pieces: int = 0
    connected_at: float = 0.0  # every session connected
    window_start: float = 0.0
    window_end: float = 0.0
    closed_at: float = 0.0  # every connection closed

    def note_error(self, text: str) -> None:
        if len(self.error_samples) < 3:
            self.error_samples.append(text)


class Dropped(Exception):
    """The session cannot go on: its connection closed, or a reply never came (a late
    one would be taken for the answer to the next message)."""


@dataclass
class Session:
    ws: ClientConnection
    session_id: str
    result: LoadResult
    reply_timeout_s: float
    sequence: int = 0
    # Any error reply, timeout or drop. An error reply does not stop the session,
    # so the offered load stays what the plan says.
    failed: bool = False

    async def exchange(self, window: Callable[[float], bool]) -> None:
        """Send one text message and wait for its answer; raise Dropped if none comes."""
        self.sequence += 1
        text = f"{self.session_id} message {self.sequence} about learning"
        started = time.monotonic()
        try:
            await self.ws.send(json.dumps({"type": "text", "text": text}))
            self.result.sent += 1
            error = await asyncio.wait_for(self._answer(), self.reply_timeout_s)
        except TimeoutError:
            self.result.no_reply += 1
            raise Dropped(f"{self.session_id}: no reply in {self.reply_timeout_s} s") from None
        except (ConnectionClosed, WebSocketException, OSError) as exc:
            raise Dropped(f"{self.session_id}: {exc!r}") from exc
        if error is not None:
            self._count_error(error)
            return
        done = time.monotonic()
        self.result.answered += 1
        if window(started):
            self.result.window_answered += 1
            self.result.window_latencies_ms.append((done - started) * 1000)

    async def _answer(self) -> dict[str, Any] | None:
        """None for a `response`, else the `error` message."""
        # A pong or any other message is not the answer: keep reading.
        while True:
            message = json.loads(await self.ws.recv())
            kind = message.get("type")
            if kind == "delta":
                self.result.pieces += 1
            elif kind == "response":
                return None
            elif kind == "error":
                return dict(message)

    def _count_error(self, error: dict[str, Any]) -> None:
        self.failed = True
        self.result.error_replies += 1
        code = str(error.get("code"))
        self.result.error_codes[code] = self.result.error_codes.get(code, 0) + 1
        self.result.note_error(f"{self.session_id}: error reply {error}")


async def open_sessions(plan: Plan, result: LoadResult) -> list[Session]:
    sessions: list[Session] = []
    batch = plan.opening.batch
    query = "?stream=1" if plan.stream else ""
    for first in range(0, plan.sessions, batch):
        ids = [f"{plan.prefix}-{n}" for n in range(first, min(first + batch, plan.sessions))]
        opened = await asyncio.gather(
            *(connect(f"{plan.base_url}/ws/{sid}{query}", open_timeout=30) for sid in ids),
            return_exceptions=True,
        )
        for sid, ws in zip(ids, opened, strict=True):
            if isinstance(ws, BaseException):
                result.connect_failures += 1
                result.note_error(f"connect {sid}: {ws!r}")
            else:
                sessions.append(Session(ws, sid, result, plan.reply_timeout_s))
        if first + batch < plan.sessions:
            await asyncio.sleep(plan.opening.pause_s)
    result.connected = len(sessions)
    result.connected_at = time.monotonic()
    return sessions


async def _guarded(session: Session, body: Awaitable[None]) -> None:
    try:
        await body
    except Dropped as exc:
        session.failed = True
        session.result.note_error(str(exc))


async def closed_loop(session: Session, plan: ClosedLoopPlan, start: float) -> None:
    window_start = start + plan.warmup_s
    window_end = window_start + plan.duration_s

    def in_window(sent_at: float) -> bool:
        return window_start <= sent_at < window_end

    while time.monotonic() < window_end:
        await session.exchange(in_window)


async def paced(session: Session, plan: PacedPlan, first_at: float) -> None:
    """One message every interval_s, or right after a reply that took longer.

    Late messages are not caught up in a burst: a learner does not talk faster
    because the companion was slow, and a backlog left by a stall can drain.
    """
    next_at = first_at
    for _ in range(plan.messages):
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        next_at = time.monotonic() + plan.interval_s
        await session.exchange(lambda _: True)


async def close_all(sessions: list[Session]) -> None:
    async def close(session: Session) -> None:
        with contextlib.suppress(WebSocketException, OSError, TimeoutError):
            await asyncio.wait_for(session.ws.close(), 10)

    await asyncio.gather(*(close(s) for s in sessions))


async def run_plan(plan: Plan) -> LoadResult:
    result = LoadResult()
    sessions = await open_sessions(plan, result)
    start = time.monotonic()
    if isinstance(plan, ClosedLoopPlan):
        result.window_start = start + plan.warmup_s
        result.window_end = result.window_start + plan.duration_s
        bodies = [closed_loop(s, plan, start) for s in sessions]
    else:
        spread = plan.interval_s / max(1, len(sessions))
        bodies = [paced(s, plan, start + i * spread) for i, s in enumerate(sessions)]
        result.window_start = start
    await asyncio.gather(*(_guarded(s, b) for s, b in zip(sessions, bodies, strict=True)))
    result.failed_sessions = sum(s.failed for s in sessions)
    if isinstance(plan, PacedPlan):
        result.window_end = time.monotonic()
    await close_all(sessions)
    result.closed_at = time.monotonic()
    return result


def _child_main(plan: Plan, pipe: Connection) -> None:
    # Ctrl-C reaches the whole process group: the orchestrator stops this process
    # itself, and a traceback from here would only bury its message.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(run_plan(plan))
    pipe.send(result)
    pipe.close()


class LoadProcess:
    """A generator process: `start()`, read `pid`, then `result()`; `stop()` always."""

    def __init__(self, plan: Plan) -> None:
        # spawn, not fork: the orchestrator has threads (samplers) and an event loop.
        context = multiprocessing.get_context("spawn")
        self._receiver, sender = context.Pipe(duplex=False)
        self._sender = sender
        self._process = context.Process(
            target=_child_main, args=(plan, sender), name="bench-load", daemon=True
        )

    def start(self) -> int:
        self._process.start()
        self._sender.close()  # only the child writes
        pid = self._process.pid
        if pid is None:
            raise RuntimeError("load generator did not start")
        return pid

    async def result(self, timeout: float) -> LoadResult:
        deadline = time.monotonic() + timeout
        # poll() is also true at end of file: a child that died sends nothing.
        while not self._receiver.poll():
            if time.monotonic() > deadline:
                raise TimeoutError(f"load generator still running after {timeout:.0f} s")
            await asyncio.sleep(0.1)
        try:
            result = self._receiver.recv()
        except EOFError:
            self._process.join(5)
            raise RuntimeError(f"load generator died (exit {self._process.exitcode})") from None
        if not isinstance(result, LoadResult):
            raise RuntimeError(f"load generator sent {type(result).__name__}")
        return result

    def stop(self) -> None:
        if self._process.is_alive():
            self._process.terminate()
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._receiver.close()
