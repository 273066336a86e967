"""Streamed replies: what they cost the system, and a self-hosted model's path.

4. Streaming clients against v1 clients: closed-loop WebSocket sessions on one
   replica of each service with the instant model (which writes its reply word by
   word, so every reply is several pieces), alternating v1 runs and `?stream=1`
   runs on the same stack, so the machine's noise falls on both alike.
5. The OpenAI-compatible provider: the same closed loop with 20 sessions, the
   responder streaming through the real `openai` SDK from `bench.fast_llm_server`
   (a local server that streams a short reply at once, as a fast self-hosted vLLM
   or Ollama would), which runs in a process of its own.
"""

import contextlib
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.report import Row, Section, Spread, fmt
from bench.system_bench import (
    CpuUse,
    Sampler,
    Sizes,
    Stack,
    _runner,
    cpu_notes,
    cpu_rows,
    open_stack,
    run_load,
)
from bench.ws_load import ClosedLoopPlan, LoadResult
from tests.support.redis_server import free_port
from tests.support.services import ROOT

log = logging.getLogger("bench.stream")

# Streaming must not cost the system its throughput: at most this much slower.
STREAM_COST_TARGET = 0.10
COMPAT_TARGET_PER_S = 150
COMPAT_SESSIONS = 20


@dataclass
class Run:
    stream: bool
    result: LoadResult
    cpu: dict[str, CpuUse]

    @property
    def rate(self) -> float:
        window = self.result.window_end - self.result.window_start
        return self.result.window_answered / window if window > 0 else 0.0

    @property
    def pieces_per_reply(self) -> float:
        return self.result.pieces / self.result.answered if self.result.answered else 0.0

    @property
    def failures(self) -> int:
        r = self.result
        return r.error_replies + r.no_reply + r.failed_sessions + r.connect_failures


async def closed_loop(
    stack: Stack, sessions: int, warmup_s: float, duration_s: float, *, stream: bool, tag: str
) -> Run:
    plan = ClosedLoopPlan(
        stack.ws_url,
        sessions=sessions,
        warmup_s=warmup_s,
        duration_s=duration_s,
        prefix=tag,
        stream=stream,
    )
    with Sampler(stack.pids()) as sampler:
        result = await run_load(plan, sampler, 120 + warmup_s + duration_s)
        cpu = sampler.cpu(result.window_start, result.window_end)
    return Run(stream, result, cpu)


async def alternate(stack: Stack, sizes: Sizes, rounds: int) -> list[Run]:
    window = max(sizes.throughput_s / 2, 2.0)
    runs = []
    for n in range(rounds):
        for stream in (False, True):
            tag = f"{'stream' if stream else 'v1'}-{n}"
            log.info("throughput: %s", tag)
            runs.append(
                await closed_loop(
                    stack,
                    sizes.throughput_sessions,
                    sizes.throughput_warmup_s,
                    window,
                    stream=stream,
                    tag=tag,
                )
            )
    return runs


def streaming_section(runs: list[Run], sizes: Sizes) -> Section:
    v1 = [r.rate for r in runs if not r.stream]
    streamed = [r.rate for r in runs if r.stream]
    v1_mean, stream_mean = statistics.mean(v1), statistics.mean(streamed)
    cost = 1 - stream_mean / v1_mean if v1_mean else 1.0
    pieces = statistics.mean(r.pieces_per_reply for r in runs if r.stream)
    latency = {
        stream: Spread.of(
            [ms for r in runs if r.stream is stream for ms in r.result.window_latencies_ms]
        )
        for stream in (False, True)
    }
    failures = sum(r.failures for r in runs)
    rows = [
        Row("closed-loop sessions, runs of each kind", f"{sizes.throughput_sessions}, {len(v1)}"),
        Row("v1 clients, exchanges/s per run", ", ".join(f"{x:,.0f}" for x in v1)),
        Row("streaming clients, exchanges/s per run", ", ".join(f"{x:,.0f}" for x in streamed)),
        Row(
            "streaming against v1, mean exchanges/s",
            f"{stream_mean:,.0f} / {v1_mean:,.0f} ({cost:+.1%} slower)"
            if cost >= 0
            else f"{stream_mean:,.0f} / {v1_mean:,.0f} ({-cost:.1%} faster)",
            f"at most {STREAM_COST_TARGET:.0%} slower",
            cost <= STREAM_COST_TARGET,
        ),
        Row("pieces per streamed reply (delta messages received)", f"{pieces:.1f}"),
        Row(
            "latency under load, v1 / streaming, p50",
            f"{fmt(latency[False].median)} / {fmt(latency[True].median)} ms",
        ),
        Row("errors, no reply, failed sessions (all runs)", str(failures), "0", failures == 0),
        *cpu_rows(next(r.cpu for r in runs if r.stream)),
    ]  # fmt: skip
    notes = [
        "The instant model writes its reply word by word (13 words); the responder "
        "cuts it into pieces (first word alone, then clauses or six words).",
        "Runs alternate v1, streaming, v1, streaming on one stack; CPU rows: the first "
        "streaming run.",
        *cpu_notes(next(r.cpu for r in runs if r.stream)),
    ]
    return Section("streaming", "4. Streaming clients against v1 clients", rows, notes)


@contextlib.contextmanager
def fast_llm(*, echo: bool = False) -> Iterator[str]:
    """bench.fast_llm_server in a process of its own (`--echo`: its replies repeat
    the last message); yields its base URL."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.fast_llm_server", "--port", str(port)]
    proc = subprocess.Popen([*argv, "--echo"] if echo else argv, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(f"{url}/chat/completions", json={}, timeout=1)
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("bench.fast_llm_server did not start")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def compat_section(runs: list[Run], sizes: Sizes) -> Section:
    rows = []
    for run in runs:
        kind = "streaming" if run.stream else "v1"
        rows.append(
            Row(
                f"{kind} clients, exchanges/s ({COMPAT_SESSIONS} sessions)",
                f"{run.rate:,.0f}/s",
                f"≥ {COMPAT_TARGET_PER_S}/s",
                run.rate >= COMPAT_TARGET_PER_S,
            )
        )
    failures = sum(r.failures for r in runs)
    rows.append(Row("error replies, no reply, failed sessions", str(failures), "0", failures == 0))
    rows += cpu_rows(runs[0].cpu)
    notes = [
        "The responder streams every reply through `openai.AsyncOpenAI` from "
        "bench.fast_llm_server, which answers each request with the same 15-chunk "
        "event stream at once (its own process).",
        "CPU rows: the v1 run.",
        *cpu_notes(runs[0].cpu),
    ]
    return Section("compat", "5. Through the OpenAI-compatible provider", rows, notes)


def run_stream(sizes: Sizes) -> list[Section]:
    rounds = 2
    with (
        tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp,
        open_stack(Path(tmp)) as stack,
        _runner() as runner,
    ):
        log.info("stack up: %s", stack.pids())
        runs = runner.run(alternate(stack, sizes, rounds))
    sections = [streaming_section(runs, sizes)]
    with (
        fast_llm() as url,
        tempfile.TemporaryDirectory(prefix="bench-compat-") as tmp,
        open_stack(
            Path(tmp), {"LLM_PROVIDER": "openai", "LLM_BASE_URL": url, "LLM_MAX_RETRIES": "0"}
        ) as stack,
        _runner() as runner,
    ):
        log.info("stack up with the OpenAI-compatible provider: %s", stack.pids())
        window = max(sizes.throughput_s / 2, 2.0)
        compat = [
            runner.run(
                closed_loop(
                    stack, COMPAT_SESSIONS, sizes.throughput_warmup_s, window, stream=stream,
                    tag=f"compat-{'stream' if stream else 'v1'}",
                )
            )
            for stream in (False, True)
        ]  # fmt: skip
    sections.append(compat_section(compat, sizes))
    return sections
