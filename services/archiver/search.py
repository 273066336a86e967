"""Full-text search over the archive: BM25-ranked hits with HTML snippets.

Where the time goes at 1,000,000 captures, and what is done about it:

1. Ranking every match of a common word by bm25() means visiting hundreds of
   thousands of rows. Only the newest `candidate_limit` matches are ranked:
   FTS5 walks its doclists in descending rowid order and stops there, however
   many matches there are (a query expected to have few matches is read
   forwards instead, which FTS5 does twice as fast; see `_newest`). So the
   ranking is relevance within the most recent N matches: an excellent but
   old match of a very common term may be left out; for a query with fewer
   matches than N it covers every match.

2. bm25() also counts, once per query, every row containing each phrase of
   its expression, to compute the IDFs: about 20 ms at 1,000,000 rows for a
   word found in every row, and 200 ms for a phrase of two such words
   ("to the"), whatever the number of candidates. In an archive of
   `EXACT_RANKING_MAX_ROWS` rows or fewer that is cheap, and bm25() ranks by
   the query as typed: exact FTS5 BM25. In a larger one the query still
   selects the candidates, but bm25() ranks them by a cheaper expression:
   - the query's words: a phrase is ranked by its words (what its IDF and
     term frequencies come from), a prefix by itself;
   - only the rarest of them, within two budgets: their estimated row counts
     add up to at most `COUNT_BUDGET_ROWS` (bm25's IDF count), and their
     estimated rows between the oldest and newest candidate to at most
     `SCAN_BUDGET_ROWS` (the ranking cursor walks those to reach the
     candidates: for a rare phrase of common words they are spread over the
     whole archive). The words left out are the most common ones, whose IDF
     weighs least; a word in more than half of all rows weighs nothing at all
     (FTS5 clamps its IDF to 1e-6).
   Row counts are estimated from a count over the newest `DENSITY_WINDOW`
   rowids, which FTS5 answers from the tail of each doclist. When no word
   fits (`the`, `"to the"`: every word is very common), BM25 has nothing
   useful to rank by and the newest matches come first.

3. snippet() re-tokenizes the text, so it runs for the `limit` winners only,
   each looked up by rowid. A prefix the prefix index does not cover makes
   every FTS5 cursor merge many doclists; its snippets then come from a
   single cursor over the winners' rowid range instead.

A search is one learner's (see db: schema version 3). Their captures are
selected in the FTS query itself (`fts_query.owned_by`): the learner's doclist
is ANDed with the query's, and FTS5 skips the other learners' entries instead
of reading them. Where the query ranks by a cheaper expression (2. above), that
expression is not filtered: it only scores candidates already chosen, and the
filter would have bm25() count every capture of the learner, once per search.
Word counts, IDFs and budgets are the whole archive's, which is what bm25()
and the ranking cursor walk. Two shortcuts:

- a learner who owns every capture (one learner, AUTH_MODE=open) is searched
  without the filter, which costs about 10 µs per match to skip through the
  learner's doclist (1.4 ms for a rare word at 200,000 captures);
- a learner without captures gets [] without a query.

Whatever the FTS query, the last statement keeps only rows of `captures` whose
`learner` is the asker: a capture written by another learner between the
first statement and the last can cost a hit, never show one.
"""

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

import aiosqlite

from services.archiver.fts_query import (
    Term,
    learner_filter,
    needs_doclist_merge,
    owned_by,
    to_expression,
)
from shared.events import SearchHit

MARK_OPEN, MARK_CLOSE = "\x02", "\x03"
_ELLIPSIS = "…"
# Tokens per snippet (FTS5 allows up to 64).
_SNIPPET_TOKENS = 16

# Up to this many captures, bm25() ranks the query as typed (see above).
EXACT_RANKING_MAX_ROWS = 20_000
# Rows per word estimated from its matches among the newest this-many rowids.
DENSITY_WINDOW = 4096
# About 5 ms each at 1,000,000 rows: counting a doclist entry costs ~20 ns,
# stepping the ranking cursor past a row that is not a candidate ~120 ns.
COUNT_BUDGET_ROWS = 250_000
SCAN_BUDGET_ROWS = 40_000

# Columns session_id, user_text, agent_text, learner_key: the owner's token
# weighs nothing, or every match would score as if it had one more word.
_BM25 = "bm25(captures_fts, 1.0, 1.0, 1.0, 0.0)"

# bm25() computed while collecting the candidates, one pass.
_RANK_QUERY = f"""
SELECT id FROM (
    SELECT rowid AS id, {_BM25} AS score
    FROM captures_fts WHERE captures_fts MATCH :query
    ORDER BY rowid DESC LIMIT :candidates
)
ORDER BY score, id DESC LIMIT :limit
"""

_ALL_FORWARD = """
SELECT rowid FROM captures_fts WHERE captures_fts MATCH :query ORDER BY rowid LIMIT :cap
"""
# See _newest: matches are read forwards when the estimate is at most
# `_FORWARD_MAX_FACTOR` times the number wanted; the forward read gives up
# (and the backward one runs) past `_FORWARD_CAP_FACTOR` times.
_FORWARD_MAX_FACTOR = 2
_FORWARD_CAP_FACTOR = 4

# bm25() of `:ranking` for the candidates only. The unary + keeps the IN list
# out of FTS5's index choice: FTS5 would restart its cursor, and bm25's IDF
# count, once per value.
_RANK_CANDIDATES = f"""
SELECT rowid FROM captures_fts
WHERE captures_fts MATCH :ranking
  AND rowid BETWEEN :low AND :high
  AND +rowid IN (SELECT value FROM json_each(:ids))
ORDER BY {_BM25}, rowid DESC LIMIT :limit
"""

_NEWEST = """
SELECT rowid FROM captures_fts WHERE captures_fts MATCH :query
ORDER BY rowid DESC LIMIT :limit
"""

_COLUMNS = f"""
c.id, c.session_id, c.timestamp, c.user_text, c.agent_text,
snippet(captures_fts, 1, :open, :close, '{_ELLIPSIS}', {_SNIPPET_TOKENS}),
snippet(captures_fts, 2, :open, :close, '{_ELLIPSIS}', {_SNIPPET_TOKENS})
"""

# Whose rows a search may return, checked on `captures` whatever the FTS query
# selected (see the module docstring); :learner NULL: anyone's.
_OWNED = "(:learner IS NULL OR c.learner = :learner)"

# CROSS JOIN fixes the join order: one FTS5 lookup by rowid per winner.
_DETAILS_BY_ROWID = f"""
SELECT {_COLUMNS}
FROM json_each(:ids) AS winner
CROSS JOIN captures_fts
CROSS JOIN captures AS c
WHERE captures_fts MATCH :query
  AND captures_fts.rowid = winner.value
  AND c.id = winner.value
  AND {_OWNED}
"""

_DETAILS_BY_RANGE = f"""
SELECT {_COLUMNS}
FROM captures_fts
CROSS JOIN captures AS c
WHERE captures_fts MATCH :query
  AND captures_fts.rowid BETWEEN :low AND :high
  AND +captures_fts.rowid IN (SELECT value FROM json_each(:ids))
  AND c.id = captures_fts.rowid
  AND {_OWNED}
"""

# The learner's captures, and everyone's: whether the FTS query must say whose.
_OWNERSHIP = """
SELECT (SELECT total_captures FROM learner_stats WHERE learner = ?),
       (SELECT total_captures FROM capture_stats WHERE id = 1)
"""


def render_snippet(raw: str) -> str:
    """HTML for a snippet: the learner's text escaped, only <mark> as markup."""
    escaped = html.escape(raw, quote=True)
    return escaped.replace(MARK_OPEN, "<mark>").replace(MARK_CLOSE, "</mark>")


def _estimate_sql(words: int) -> str:
    """Total rows, newest rowid, the matches of the query `?2` among the newest
    `?1` rowids of the learner `?3` (everyone's if NULL), then those of the words
    `?4`, `?5`... among the newest `?1` rowids of all."""
    counts = "".join(
        f",\n(SELECT count(*) FROM captures_fts WHERE captures_fts MATCH ?{i + 4}"
        " AND rowid > (SELECT low FROM recent))"
        for i in range(words)
    )
    # A learner's newest rows may be spread far wider than everyone's newest:
    # their window starts at their ?1-th newest capture, found in their doclist.
    return (
        "WITH recent(low) AS (SELECT max(id) - ?1 FROM captures),\n"
        "mine(low) AS (SELECT CASE WHEN ?3 IS NULL THEN (SELECT low FROM recent) ELSE"
        " coalesce((SELECT rowid - 1 FROM captures_fts WHERE captures_fts MATCH ?3"
        " ORDER BY rowid DESC LIMIT 1 OFFSET ?1 - 1), 0) END)\n"
        "SELECT (SELECT total_captures FROM capture_stats WHERE id = 1),"
        " (SELECT max(id) FROM captures),"
        " (SELECT count(*) FROM captures_fts WHERE captures_fts MATCH ?2"
        f" AND rowid > (SELECT low FROM mine)){counts}"
    )


@dataclass(frozen=True, slots=True)
class _Word:
    term: Term
    rows: int  # estimated rows containing it
    density: float  # share of the newest rows containing it


@dataclass(frozen=True, slots=True)
class _Estimate:
    words: list[_Word]  # rarest first
    query_rows: int  # estimated rows matching the whole query


@dataclass(frozen=True, slots=True)
class _Scope:
    """Whose captures a search selects, and how."""

    # The FTS query's owner filter; None: the query selects anyone's rows.
    learner: str | None
    # How many rows that leaves to search (the learner's, or all).
    rows: int


async def _estimate(
    conn: aiosqlite.Connection, terms: Sequence[Term], query: str, scope: _Scope
) -> _Estimate | None:
    """Row counts of the query (`terms` in `scope`) and of its words (in all
    rows); None in a small archive."""
    words = list(dict.fromkeys(word for term in terms for word in term.words()))
    owner = learner_filter(scope.learner) if scope.learner is not None else None
    params = [DENSITY_WINDOW, query, owner, *(word.to_fts() for word in words)]
    async with conn.execute(_estimate_sql(len(words)), params) as cursor:
        row = await cursor.fetchone()
    if row is None or (row[0] or 0) <= EXACT_RANKING_MAX_ROWS:
        return None
    total, newest, query_count, *word_counts = (int(value or 0) for value in row)
    window = max(1, min(DENSITY_WINDOW, newest))
    found = [
        _Word(word, count * total // window, count / window)
        for word, count in zip(words, word_counts, strict=True)
    ]
    mine = max(1, min(DENSITY_WINDOW, scope.rows if scope.learner is not None else newest))
    rows = total if scope.learner is None else scope.rows
    return _Estimate(sorted(found, key=lambda word: word.rows), query_count * rows // mine)


def _affordable(words: Sequence[_Word], span: int | None) -> list[Term]:
    """The rarest words within the budgets; `span`: rowids between candidates."""
    chosen: list[Term] = []
    counted = scanned = 0
    for word in words:
        counted += word.rows
        if span is not None:
            scanned += min(word.rows, math.ceil(word.density * span))
        if counted > COUNT_BUDGET_ROWS or scanned > SCAN_BUDGET_ROWS:
            break
        chosen.append(word.term)
    return chosen


async def _ids(conn: aiosqlite.Connection, sql: str, params: dict[str, object]) -> list[int]:
    return [int(row[0]) for row in await conn.execute_fetchall(sql, params)]


async def _newest(
    conn: aiosqlite.Connection, query: str, count: int, estimated_rows: int
) -> list[int]:
    """Rowids of the newest `count` matches of `query`, newest first.

    FTS5 walks a doclist backwards about half as fast as forwards, and a query
    with few matches (a rare phrase of common words) has to be walked (nearly)
    to its end either way. So when the estimate says the matches are few, they
    are all read forwards, up to a cap that bounds the cost of a wrong
    estimate, and the newest are kept.
    """
    if estimated_rows <= count * _FORWARD_MAX_FACTOR:
        cap = count * _FORWARD_CAP_FACTOR
        found = await _ids(conn, _ALL_FORWARD, {"query": query, "cap": cap})
        if len(found) < cap:
            return found[: -count - 1 : -1]
    return await _ids(conn, _NEWEST, {"query": query, "limit": count})


async def _rank(
    conn: aiosqlite.Connection,
    terms: Sequence[Term],
    query: str,
    scope: _Scope,
    limit: int,
    candidates: int,
) -> list[int]:
    """Rowids of the best `limit` matches of `query` (`terms` in `scope`), best
    first (see the module docstring)."""
    params: dict[str, object] = {"query": query, "candidates": candidates, "limit": limit}
    estimate = await _estimate(conn, terms, query, scope)
    if estimate is None:
        return await _ids(conn, _RANK_QUERY, params)
    ranking = to_expression(_affordable(estimate.words, None))
    if not ranking:
        return await _newest(conn, query, limit, estimate.query_rows)
    if ranking == query:
        # A single word (or prefix) cheap enough to count, and no owner filter
        # for bm25() to count too: one pass does it all.
        return await _ids(conn, _RANK_QUERY, params)
    found = await _newest(conn, query, candidates, estimate.query_rows)
    if not found:
        return []
    ranking = to_expression(_affordable(estimate.words, found[0] - found[-1] + 1))
    if not ranking:
        return found[:limit]
    return await _ids(
        conn,
        _RANK_CANDIDATES,
        {
            "ranking": ranking,
            "low": found[-1],
            "high": found[0],
            "ids": _json_ids(found),
            "limit": limit,
        },
    )


def _json_ids(ids: Sequence[int]) -> str:
    return "[" + ",".join(map(str, ids)) + "]"


async def _scope(conn: aiosqlite.Connection, learner: str | None) -> _Scope | None:
    """How to select the captures of `learner` (None: everyone's); None if
    there is none."""
    async with conn.execute(_OWNERSHIP, (learner,)) as cursor:
        row = await cursor.fetchone()
    mine, everyone = (int(value or 0) for value in row) if row else (0, 0)
    if learner is None or mine == everyone:
        # Everyone's, or the learner is everyone: the filter would select all.
        return _Scope(None, everyone) if everyone else None
    return _Scope(learner, mine) if mine else None


async def search(
    conn: aiosqlite.Connection,
    terms: Sequence[Term],
    limit: int,
    candidate_limit: int,
    learner: str | None,
) -> list[SearchHit]:
    """The best `limit` matches of `terms` among the captures of `learner`
    (None: everyone's; see the module docstring)."""
    if not terms or limit < 1:
        return []
    scope = await _scope(conn, learner)
    if scope is None:
        return []
    query = owned_by(scope.learner, to_expression(terms))
    ids = await _rank(conn, terms, query, scope, limit, max(candidate_limit, limit))
    if not ids:
        return []
    params: dict[str, object] = {
        "query": query,
        "ids": _json_ids(ids),
        "open": MARK_OPEN,
        "close": MARK_CLOSE,
        "learner": learner,
    }
    if any(needs_doclist_merge(term) for term in terms):
        sql, params["low"], params["high"] = _DETAILS_BY_RANGE, min(ids), max(ids)
    else:
        sql = _DETAILS_BY_ROWID
    hits = {
        int(row[0]): SearchHit(
            id=row[0],
            session_id=row[1],
            timestamp=row[2],
            user_text=row[3],
            agent_text=row[4],
            user_snippet=render_snippet(row[5]),
            agent_snippet=render_snippet(row[6]),
        )
        for row in await conn.execute_fetchall(sql, params)
    }
    # A row deleted between the two statements is simply left out.
    return [hits[i] for i in ids if i in hits]
