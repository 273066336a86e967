"""Helpers every benchmark shares: percentiles, markdown tables, result files.

A section of the report is a table of `metric | value | target | met?` rows plus
a notes line; `write_results` stores each section under bench/results/ and the
combined report, with the machine it ran on, as bench/results/latest.md.
"""

import logging
import math
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("bench")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Order of the sections in latest.md; also the names of their files.
SECTION_ORDER = (
    "latency",
    "throughput",
    "sessions",
    "streaming",
    "compat",
    "voice",
    "search",
    "pwa",
    "telephony",
    "tracing",
    "recovery",
    "soak",
)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linearly interpolated; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Spread:
    """Median and p95 of a sample, in the sample's unit."""

    median: float
    p95: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        return cls(percentile(values, 50), percentile(values, 95), len(values))


def fmt(value: float, unit: str = "", digits: int = 2) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}{unit}"


def met(ok: bool | None) -> str:
    """The `met?` column: None where a row has no target."""
    if ok is None:
        return ""
    return "yes" if ok else "**no**"


@dataclass(frozen=True)
class Row:
    metric: str
    value: str
    target: str = ""
    ok: bool | None = None


@dataclass
class Section:
    """One benchmark's result: a titled table, notes, and how to reproduce it."""

    name: str
    title: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    command: str = ""
    # Sections written by another tool (search_bench) arrive as finished markdown.
    markdown: str | None = None

    def render(self) -> str:
        if self.markdown is not None:
            command = f"\nCommand: `{self.command}`\n" if self.command else ""
            return self.markdown.rstrip() + "\n" + command
        lines = [f"## {self.title}", ""]
        lines += ["| metric | value | target | met? |", "|---|---:|---|---|"]
        lines += [f"| {r.metric} | {r.value} | {r.target} | {met(r.ok)} |" for r in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        if self.command:
            lines += ["", f"Command: `{self.command}`"]
        return "\n".join(lines) + "\n"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_summary() -> str:
    return (
        f"{os.cpu_count()} cores (nproc), CPU: {cpu_model()}, "
        f"Python {platform.python_version()} on {platform.system()} {platform.release()}"
    )


def emit(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _stamp() -> str:
    return f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"


def _earlier(name: str) -> str | None:
    """A section file left by an earlier `--only` run, to keep latest.md complete."""
    path = RESULTS_DIR / f"{name}.md"
    return path.read_text(encoding="utf-8") if path.exists() else None


def write_results(sections: Sequence[Section], commands: Sequence[str]) -> Path:
    """Write each section to results/<name>.md and a combined results/latest.md.

    Sections this run did not measure are copied into latest.md from their own
    files, each of which carries the date it was measured.
    """
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = _stamp()
    fresh: dict[str, str] = {}
    for section in sections:
        text = f"_Measured {stamp} on {machine_summary()}._\n\n{section.render()}"
        (RESULTS_DIR / f"{section.name}.md").write_text(text, encoding="utf-8")
        fresh[section.name] = text
    header = [
        "# Benchmark results",
        "",
        f"- Date: {stamp}",
        f"- Machine: {machine_summary()}",
        *[f"- Command: `{command}`" for command in commands],
        "",
    ]
    parts = []
    for name in SECTION_ORDER:
        if name in fresh:
            parts.append(fresh[name])
        elif (earlier := _earlier(name)) is not None:
            parts.append(f"_(from an earlier run)_\n\n{earlier}")
    latest = RESULTS_DIR / "latest.md"
    latest.write_text("\n".join(header) + "\n" + "\n".join(parts), encoding="utf-8")
    return latest


def spread_row(
    metric: str, seconds: Sequence[float], target_s: float | None = None, *,
    unit: str = "s", digits: int = 2,
) -> Row:  # fmt: skip
    """A `median / p95` row of durations given in seconds, shown in `unit` (s or ms)."""
    scale = 1000 if unit == "ms" else 1
    spread = Spread.of(seconds)
    return Row(
        f"{metric} (n={spread.count}), median / p95",
        f"{fmt(spread.median * scale, ' ' + unit, digits)} / "
        f"{fmt(spread.p95 * scale, ' ' + unit, digits)}",
        f"median ≤ {target_s * scale:g} {unit}" if target_s is not None else "",
        spread.median <= target_s if target_s is not None else None,
    )
