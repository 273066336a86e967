"""What tracing costs (issue: operators): the same WebSocket exchanges with no
collector configured (tracing off: no provider, no broker middleware) and with
every service exporting its spans over OTLP/HTTP to a receiver in this process.

One message at a time on one connection, through all the services, with the
instant model; runs alternate off, on, off, on on fresh stacks, so a drift of the
machine falls on both.
"""

import asyncio
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect

from bench.report import Row, Section, Spread, fmt, spread_row
from bench.system_bench import exchange, open_stack
from tests.support.otlp import OTLPReceiver

RUNS = 2
# Spans leave each process within this many ms (OTel's default is 5 s).
EXPORT_DELAY_MS = "500"


async def timed_exchanges(ws_url: str, n: int, warmup: int) -> list[float]:
    took: list[float] = []
    async with connect(f"{ws_url}/ws/tracing-bench") as ws:
        for i in range(warmup + n):
            began = time.perf_counter()
            await exchange(ws, f"traced message {i} about learning")
            if i >= warmup:
                took.append(time.perf_counter() - began)
    return took


def run_tracing(quick: bool) -> list[Section]:
    n, warmup = (30, 5) if quick else (200, 20)
    off: list[float] = []
    on: list[float] = []
    spans = 0
    with OTLPReceiver() as receiver:
        for _ in range(RUNS):
            for traced in (False, True):
                env = (
                    {
                        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                        "OTEL_BSP_SCHEDULE_DELAY": EXPORT_DELAY_MS,
                    }
                    if traced
                    else {}
                )
                with (
                    tempfile.TemporaryDirectory(prefix="lva-tracing-bench-") as tmp,
                    open_stack(Path(tmp), env) as stack,
                ):
                    took = asyncio.run(timed_exchanges(stack.ws_url, n, warmup))
                (on if traced else off).extend(took)
        spans = len(receiver.snapshot())
    off_spread, on_spread = Spread.of(off), Spread.of(on)
    added = (on_spread.median - off_spread.median) * 1000
    rows = [
        spread_row("tracing off (no endpoint): message → response", off, unit="ms", digits=1),
        spread_row("tracing on (OTLP/HTTP): message → response", on, unit="ms", digits=1),
        Row(
            "added by tracing, median",
            f"{fmt(added, ' ms', 2)} ({fmt(added / (off_spread.median * 1000) * 100, '%', 1)})",
            "",
            None,
        ),
        Row("spans received while traced", f"{spans:,}", "", None),
    ]
    notes = [
        f"{RUNS} runs of each, alternating, {n} messages each after {warmup} of warm-up, one "
        "at a time on one WebSocket; gateway, transcriber, responder (instant model) and "
        "archiver as processes on a private Redis; spans to an OTLP/HTTP receiver in the "
        "bench process.",
        "Off is the default: no tracer provider, no telemetry middleware, so each span "
        "site costs a call to OpenTelemetry's no-op tracer.",
    ]
    return [Section("tracing", "Tracing: its cost per exchange", rows, notes)]
