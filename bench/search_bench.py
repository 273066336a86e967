"""Archive ingest and search benchmark on synthetic captures.

    python -m bench.search_bench [--rows 1000000] [--out bench/results/search.md]

Generates captures whose words follow a Zipf distribution over a vocabulary of a
few thousand English-like words (common words typed in below, plus derived
forms and invented words for the long tail; nothing is downloaded), ingests them
through `Archive.save_many` in batches, then times `Archive.search` for four
kinds of query. Prints a markdown table and writes it to --out.

With --minority-share, each session is a minority learner's with that
probability and a majority learner's otherwise, and every query is timed as each
of them: what the other's captures cost a search (the texts are those of the
default run).
"""

import argparse
import asyncio
import dataclasses
import functools
import itertools
import logging
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.archiver.repository import Archive
from services.archiver.settings import ArchiverSettings
from shared.events import DEFAULT_LEARNER, ExchangeCompleted

log = logging.getLogger("bench.search_bench")

# Most frequent first: they take the top Zipf ranks.
FUNCTION_WORDS = """
the to and of a i you it is that in what for be this with on do can about how
are was my have me your not but so if we they at or as just like there would
from more one an all think when know there's it's i'm don't some about which
really get because them then out up why also could should very way these those
""".split()

CONTENT_WORDS = """
learn learning study understand idea question answer example problem explain
memory brain practice habit focus attention time day week today yesterday
tomorrow morning evening book chapter page read reading write writing note
notes word words language english spanish french grammar vocabulary sentence
meaning context history science math physics chemistry biology algebra
geometry calculus equation number function variable graph data model machine
network computer program programming code python software system design
pattern theory concept principle method approach strategy goal plan project
progress test exam quiz review lesson course class teacher student school
university research paper article topic subject skill knowledge experience
mistake error feedback improve improvement better best good great interesting
important difficult easy hard simple complex clear confusing curious wonder
music song piano guitar art painting drawing photo movie story character
world country city travel culture people person friend family child parent
work job career business market money economy price cost value health body
sleep exercise food water energy stress mind emotion feeling happy sad calm
nature tree forest river ocean mountain weather climate planet star space
light sound color shape size speed distance force motion change growth
cell gene evolution species animal plant energy atom molecule reaction
balance structure process result effect cause reason evidence argument
logic proof rule law right truth belief value question discuss conversation
talk speak listen voice say tell ask remember forget notice realize
connect compare contrast describe define analyze create build make try
start finish continue stop begin end keep need want feel seem become
leave lead least leather leap league lean leak lease leash learner
project protein protocol provide prove process produce profile promise
control consider connect consist contain content contest context continue
station standard stage stable stack staff stair stake stamp stand star
""".split()

SYLLABLES = """
ba be bi bo bu ca ce ci co cu da de di do du fa fe fi fo fu ga ge gi go gu
ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu pa pe pi po pu
ra re ri ro ru sa se si so su ta te ti to tu va ve vi vo vu za ze zi zo zu
ar er ir or ur an en in on un al el il ol ul st tr pr br cr gr pl bl cl fl
""".split()

SUFFIXES = ("s", "ed", "ing", "er", "ly", "ness", "ment", "ful", "able", "ation")
PREFIXES = ("re", "un", "pre", "over", "under", "mis")

ZIPF_EXPONENT = 1.07
VOCABULARY_SIZE = 6000

MAJORITY, MINORITY = "bench-major", "bench-minor"


def build_vocabulary(rng: random.Random, size: int = VOCABULARY_SIZE) -> list[str]:
    """Words ordered by rank: function words, base words, then derived/invented."""
    seen: set[str] = set()
    ranked: list[str] = []

    def add(words: Sequence[str]) -> None:
        for word in words:
            if word not in seen and len(ranked) < size:
                seen.add(word)
                ranked.append(word)

    add(FUNCTION_WORDS)
    base = list(dict.fromkeys(CONTENT_WORDS))
    rng.shuffle(base)
    add(base)
    derived = [w + s for w in base for s in SUFFIXES] + [p + w for w in base for p in PREFIXES]
    rng.shuffle(derived)
    add(derived[: (size - len(ranked)) * 3 // 4])
    while len(ranked) < size:
        add(["".join(rng.choices(SYLLABLES, k=rng.randint(2, 4)))])
    return ranked


class TextGenerator:
    def __init__(self, rng: random.Random, vocabulary: list[str]) -> None:
        self.rng = rng
        self.vocabulary = vocabulary
        weights = [1.0 / (rank**ZIPF_EXPONENT) for rank in range(1, len(vocabulary) + 1)]
        self.cum_weights = list(itertools.accumulate(weights))

    def words(self, count: int) -> list[str]:
        return self.rng.choices(self.vocabulary, cum_weights=self.cum_weights, k=count)

    def sentence(self, low: int, high: int) -> str:
        words = self.words(self.rng.randint(low, high))
        words[0] = words[0].capitalize()
        if len(words) > 8 and self.rng.random() < 0.5:
            words[len(words) // 2] += ","
        return " ".join(words) + self.rng.choice((".", ".", "?", "!"))


def exchanges(rows: int, seed: int, minority: float = 0.0) -> Iterator[ExchangeCompleted]:
    rng = random.Random(seed)
    # Its own generator: the texts stay those of a run without learners.
    owners = random.Random(seed + 7)
    text = TextGenerator(rng, build_vocabulary(rng))
    moment = datetime(2025, 1, 1, tzinfo=UTC)
    session = 0
    learner = _learner(owners, minority)
    for _ in range(rows):
        if rng.random() < 0.05:
            session += 1
            learner = _learner(owners, minority)
        moment += timedelta(seconds=rng.randint(1, 30))
        yield ExchangeCompleted(
            session_id=f"bench-{session}",
            source="websocket",
            learner=learner,
            occurred_at=moment,
            user_text=text.sentence(4, 24),
            agent_text=text.sentence(8, 40),
            intent="statement",
            responder="bench",
        )


def _learner(rng: random.Random, minority: float) -> str:
    if not minority:
        return DEFAULT_LEARNER
    return MINORITY if rng.random() < minority else MAJORITY


def batched(items: Iterator[ExchangeCompleted], size: int) -> Iterator[list[ExchangeCompleted]]:
    while batch := list(itertools.islice(items, size)):
        yield batch


@dataclass
class Ingest:
    rows: int
    seconds: float  # inside save_many only
    wall_seconds: float  # including generating the events


async def ingest(
    archive: Archive, rows: int, batch_size: int, seed: int, minority: float = 0.0
) -> Ingest:
    in_save = 0.0
    started = time.perf_counter()
    stored = 0
    for batch in batched(exchanges(rows, seed, minority), batch_size):
        t0 = time.perf_counter()
        stored += await archive.save_many(batch)
        in_save += time.perf_counter() - t0
        if stored % 100_000 < batch_size:
            log.info("ingested %d rows", stored)
    return Ingest(stored, in_save, time.perf_counter() - started)


@dataclass
class Workload:
    name: str
    queries: list[str]
    example: str
    matches: str = ""


def doc_frequencies(db_path: Path, terms: Sequence[str]) -> dict[str, int]:
    conn = sqlite3.connect(db_path)
    try:
        return {
            term: conn.execute(
                "SELECT count(*) FROM captures_fts WHERE captures_fts MATCH ?", (f'"{term}"',)
            ).fetchone()[0]
            for term in terms
        }
    finally:
        conn.close()


def sample_texts(db_path: Path, count: int, rng: random.Random) -> list[str]:
    conn = sqlite3.connect(db_path)
    try:
        (top,) = conn.execute("SELECT max(id) FROM captures").fetchone()
        ids = [rng.randint(1, top) for _ in range(count)]
        return [
            conn.execute("SELECT user_text || ' ' || agent_text FROM captures WHERE id = ?", (i,))
            .fetchone()[0]
            .lower()
            for i in ids
        ]
    finally:
        conn.close()


def _span(frequencies: dict[str, int]) -> str:
    values = sorted(frequencies.values())
    return f"{values[0]:,} to {values[-1]:,}"


def workloads(db_path: Path, per_kind: int, seed: int) -> list[Workload]:
    """Queries drawn from the vocabulary the data was generated from."""
    rng = random.Random(seed + 1)
    vocabulary = build_vocabulary(random.Random(seed))
    tail = vocabulary[-1500:]
    rare = [rng.choice(tail) for _ in range(per_kind)]
    # Ranks 1..30: each word is in a large share of all rows.
    common = [rng.choice(vocabulary[:30]) for _ in range(per_kind)]
    phrases = []
    for text in sample_texts(db_path, per_kind, rng):
        words = [w.strip(",.?!") for w in text.split()]
        start = rng.randrange(len(words) - 1)
        phrases.append(f'"{words[start]} {words[start + 1]}"')
    stems = sorted({w[:3] for w in vocabulary[:2000] if len(w) >= 4 and w[:3].isalpha()})
    prefixes = ["lea*"] + [f"{rng.choice(stems)}*" for _ in range(per_kind - 1)]

    rare_df = doc_frequencies(db_path, sorted(set(rare))[:50])
    common_df = doc_frequencies(db_path, sorted(set(common)))
    return [
        Workload("rare term", rare, rare[0], f"{_span(rare_df)} rows each"),
        Workload("very common term", common, common[0], f"{_span(common_df)} rows each"),
        Workload("two-word phrase", phrases, phrases[0]),
        Workload("prefix (3 letters)", prefixes, prefixes[0]),
    ]


@dataclass
class Timing:
    median_ms: float
    p95_ms: float
    max_ms: float
    mean_hits: float


Search = Callable[[str, int], Awaitable[Sequence[object]]]


async def time_queries(search: Search, queries: Sequence[str], limit: int) -> Timing:
    durations: list[float] = []
    hits = 0
    for query in queries:
        t0 = time.perf_counter()
        results = await search(query, limit)
        durations.append((time.perf_counter() - t0) * 1000)
        hits += len(results)
    durations.sort()
    p95 = durations[max(0, int(len(durations) * 0.95) - 1)]
    return Timing(statistics.median(durations), p95, durations[-1], hits / len(queries))


def report(
    rows: int, ingest_result: Ingest | None, results: list[tuple[Workload, Timing]], meta: str
) -> str:
    lines = [f"# Archive search benchmark ({rows:,} captures)", "", meta, ""]
    if ingest_result is not None:
        rate = ingest_result.rows / ingest_result.seconds
        wall = ingest_result.rows / ingest_result.wall_seconds
        lines += [
            f"Ingest: {ingest_result.rows:,} captures in {ingest_result.seconds:.1f} s inside "
            f"`save_many` = **{rate:,.0f} captures/s** (target ≥ 20,000/s); "
            f"{wall:,.0f}/s including generating the events.",
            "",
        ]
    lines += [
        "| query kind | example | matches | queries | median ms | p95 ms | max ms | hits/query |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for workload, timing in results:
        lines.append(
            f"| {workload.name} | `{workload.example}` | {workload.matches or 'n/a'} "
            f"| {len(workload.queries)} | {timing.median_ms:.2f} | {timing.p95_ms:.2f} "
            f"| {timing.max_ms:.2f} | {timing.mean_hits:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _database_megabytes(db_dir: Path) -> float:
    return sum(p.stat().st_size for p in db_dir.glob("bench.db*")) / 1e6


async def run(args: argparse.Namespace) -> str:
    settings = ArchiverSettings()
    db_dir = Path(args.db_dir or tempfile.mkdtemp(prefix="search-bench-"))
    db_path = db_dir / "bench.db"
    archive = Archive(
        db_path,
        read_connections=settings.archive_read_connections,
        busy_timeout_ms=settings.sqlite_busy_timeout_ms,
        search_candidate_limit=args.candidates or settings.search_candidate_limit,
    )
    async with archive:
        total, _, _ = await archive.stats(None)
        ingest_result = None
        if total == 0:
            log.info("generating and ingesting %d captures into %s", args.rows, db_path)
            ingest_result = await ingest(
                archive, args.rows, args.batch_size, args.seed, args.minority_share
            )
            total = ingest_result.rows
        else:
            log.info("reusing %s with %d captures", db_path, total)
        results = []
        learners = [MINORITY, MAJORITY] if args.minority_share else [DEFAULT_LEARNER]
        shares = {learner: (await archive.stats(learner))[0] / total for learner in learners}
        for workload in workloads(db_path, args.queries, args.seed):
            for learner in learners:
                search = functools.partial(archive.search, learner=learner)
                await time_queries(search, workload.queries[:10], args.limit)  # warm-up
                timing = await time_queries(search, workload.queries, args.limit)
                shown = workload
                if args.minority_share:
                    name = f"{workload.name}, as {learner} ({shares[learner]:.0%} of captures)"
                    shown = dataclasses.replace(workload, name=name)
                log.info(
                    "%s: median %.2f ms, p95 %.2f ms", shown.name, timing.median_ms, timing.p95_ms
                )
                results.append((shown, timing))
    size_mb = _database_megabytes(db_dir)
    meta = (
        f"SQLite {sqlite3.sqlite_version}, Python {platform.python_version()}, "
        f"{platform.machine()}; batch {args.batch_size} per transaction; "
        f"search limit {args.limit}; candidate limit "
        f"{args.candidates or settings.search_candidate_limit}; database {size_mb:,.0f} MB."
    )
    return report(total, ingest_result, results, meta)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path("bench/results/search.md"))
    parser.add_argument("--batch-size", type=int, default=ArchiverSettings().archive_batch_size)
    parser.add_argument("--queries", type=int, default=200, help="queries per kind")
    parser.add_argument("--limit", type=int, default=20, help="results per search (v1 default)")
    parser.add_argument("--candidates", type=int, default=None, help="search_candidate_limit")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--minority-share",
        type=float,
        default=0.0,
        help="share of sessions owned by a second learner (0: one learner owns all)",
    )
    parser.add_argument(
        "--db-dir", default=None, help="keep the database here; reused if it has rows"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    table = asyncio.run(run(args))
    sys.stdout.write(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
