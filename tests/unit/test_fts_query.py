"""fts_query: any typed string becomes no expression or a valid FTS5 one."""

import sqlite3
import unicodedata
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.archiver.fts_query import (
    MAX_TERMS,
    MAX_TOKENS_PER_TERM,
    MIN_PREFIX_CHARS,
    build_match_expression,
    is_token_char,
    split_terms,
)

HOSTILE = [
    "",
    " ",
    "\t\n  ",
    "c++",
    '"hi',
    'hi"',
    '"',
    '""',
    '"""',
    '" "',
    '"a" "b',
    "AND",
    "OR",
    "NOT",
    "NEAR",
    "NEAR(a b)",
    "a AND",
    "OR b",
    "a NOT b",
    "foo-bar",
    "-foo",
    "3:00",
    "user_text:secret",
    "{user_text agent_text}: x",
    "*",
    "**",
    "a*b",
    '"*"',
    "-",
    "^",
    "^foo",
    "+foo",
    "(",
    ")",
    "(foo",
    "foo)",
    ":",
    "'",
    "''",
    ";DROP TABLE captures;--",
    "\U0001f600",
    "\U0001f600\U0001f680 \u2764\ufe0f",
    "x" * 2000,
    "word " * 400,
    '"' + "a " * 999 + '"',
    "*" * 2000,
    "\x00",
    "foo\x00bar",
    "\x01\x02\x03",
    "\ud800",
    "caf\u00e9 cafe\u0301",
    "\u5b66\u7fd2 \u0627\u0644\u062a\u0639\u0644\u0645",
    "\u200b\u200d",
]


@pytest.fixture(scope="module")
def fts() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:")
    # Same tokenizer and prefix index as the archive's captures_fts.
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(user_text, agent_text, prefix='3')")
    conn.executemany(
        "INSERT INTO t (rowid, user_text, agent_text) VALUES (?, ?, ?)",
        [
            (1, "I do not like c", "foo bar baz"),
            (2, "learning machine learning", "near the river at 3:00"),
            (3, "bar foo", "and or not near"),
            (4, "caf\u00e9 culture", "\u5b66\u7fd2"),
        ],
    )
    yield conn
    conn.close()


def matches(conn: sqlite3.Connection, query: str) -> list[int]:
    expression = build_match_expression(query)
    if expression is None:
        return []
    rows = conn.execute("SELECT rowid FROM t WHERE t MATCH ? ORDER BY rowid", (expression,))
    return [row[0] for row in rows]


@pytest.mark.parametrize("query", HOSTILE)
def test_hostile_input_gives_none_or_a_valid_expression(
    fts: sqlite3.Connection, query: str
) -> None:
    expression = build_match_expression(query)
    if expression is not None:
        assert expression.startswith('"')
        fts.execute("SELECT rowid FROM t WHERE t MATCH ?", (expression,)).fetchall()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("c++", '"c++"'),
        ('"hi', '"hi"'),
        ("AND", '"AND"'),
        ("NEAR(a b)", '"NEAR(a" "b)"'),
        ("foo-bar", '"foo-bar"'),
        ("3:00", '"3:00"'),
        ('"machine learning"', '"machine learning"'),
        ('say "machine learning" now', '"say" "machine learning" "now"'),
        ('"machine lea"*', '"machine lea"*'),
        ("lea*", '"lea"*'),
        ("lea**", '"lea"*'),
        ("foo-lea*", '"foo-lea"*'),
        ("foo\x00bar", '"foo" "bar"'),
    ],
)
def test_expression(query: str, expected: str) -> None:
    assert build_match_expression(query) == expected


@pytest.mark.parametrize(
    "query", ["", "   ", "*", "-", "^", "(", ")", ":", '"', '""', "\U0001f600", "-- ** ::"]
)
def test_nothing_searchable_gives_none(query: str) -> None:
    assert build_match_expression(query) is None


def test_short_prefix_is_searched_as_a_word() -> None:
    # Shorter than the prefix index: it would merge a large part of the index.
    assert MIN_PREFIX_CHARS == 3
    assert build_match_expression("le*") == '"le"'
    assert build_match_expression("a*") == '"a"'


def test_operators_are_plain_words(fts: sqlite3.Connection) -> None:
    assert matches(fts, "not") == [1, 3]
    assert matches(fts, "NOT like") == [1]
    assert matches(fts, "and or") == [3]
    assert matches(fts, "NEAR river") == [2]


def test_terms_are_anded_and_punctuation_makes_a_phrase(fts: sqlite3.Connection) -> None:
    assert matches(fts, "foo bar") == [1, 3]
    assert matches(fts, "foo-bar") == [1]
    assert matches(fts, '"bar foo"') == [3]
    assert matches(fts, "3:00") == [2]
    assert matches(fts, "c++") == [1]


def test_prefix_and_unicode(fts: sqlite3.Connection) -> None:
    assert matches(fts, "lea*") == [2]
    assert matches(fts, "learn*") == [2]
    assert matches(fts, "learn") == []
    # unicode61 folds case and removes diacritics, on both sides.
    assert matches(fts, "CAFE") == [4]
    assert matches(fts, "cafe\u0301") == [4]
    assert matches(fts, "\u5b66\u7fd2") == [4]


def test_term_and_token_caps() -> None:
    words = [f"w{i}" for i in range(MAX_TERMS + 10)]
    terms = split_terms(" ".join(words))
    assert [term.text for term in terms] == words[:MAX_TERMS]

    long_phrase = " ".join(f"t{i}" for i in range(MAX_TOKENS_PER_TERM + 5))
    (term,) = split_terms(f'"{long_phrase}"*')
    assert term.text.split() == [f"t{i}" for i in range(MAX_TOKENS_PER_TERM)]
    assert not term.prefix  # the prefix belonged to a token that was cut


def test_token_chars_agree_with_sqlite() -> None:
    """Python's view of token characters vs unicode61's, probed through FTS5.

    They may differ only for characters added to Unicode after SQLite built its
    tables (unassigned in Unicode 3.2 here), and for two Mongolian letters
    Unicode later reclassified as marks.
    """
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(x)")
    conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, instance)")
    code_points = range(1, 0x3000)
    conn.executemany(
        "INSERT INTO t (rowid, x) VALUES (?, ?)", [(cp, chr(cp)) for cp in code_points]
    )
    sqlite_tokens = {row[0] for row in conn.execute("SELECT DISTINCT doc FROM v")}
    conn.close()
    assert len(sqlite_tokens) > 5000
    differ = [cp for cp in code_points if is_token_char(chr(cp)) != (cp in sqlite_tokens)]
    unexplained = [
        hex(cp)
        for cp in differ
        if unicodedata.ucd_3_2_0.category(chr(cp)) != "Cn" and cp not in {0x1885, 0x1886}
    ]
    assert unexplained == []


_fts_syntax = st.sampled_from(
    [
        *'"*-^:()+{},',
        *" \t\x00\u0301\ud800\U0001f600",
        *["AND", "OR", "NOT", "NEAR", "NEAR(", "user_text", "a", "b", "lea"],
    ]
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(
        st.text(max_size=2000),
        st.text(st.characters(codec=None), max_size=200),
        st.lists(_fts_syntax, max_size=60).map("".join),
    )
)
def test_any_text_builds_and_runs(fts: sqlite3.Connection, text: str) -> None:
    expression = build_match_expression(text)
    if expression is not None:
        # Must not raise sqlite3.OperationalError (fts5: syntax error, ...).
        fts.execute("SELECT rowid FROM t WHERE t MATCH ?", (expression,)).fetchall()
