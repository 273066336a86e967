"""Turn whatever a learner types into a safe FTS5 MATCH expression.

FTS5's query language treats `AND`, `OR`, `NOT`, `NEAR`, `-`, `^`, `:`, `(`, `*`
and quotes specially, so passing user text through raises syntax errors
(`c++`, `"hi`, `3:00`) or changes the meaning (`NOT`). Instead every term goes
to FTS5 as a double-quoted string, the one construct in which nothing but `"`
is special:

- the text is split on whitespace into words; a balanced `"..."` is one phrase;
- a word ending in `*` (or a phrase followed by `*`) becomes a prefix query,
  `lea*` -> `"lea"*`;
- operators typed by the learner are plain words: `NOT` -> `"NOT"`;
- terms are ANDed (FTS5's implicit AND between adjacent strings);
- a word with punctuation inside stays one term, which FTS5 tokenizes into a
  phrase: `foo-bar` -> `"foo-bar"` matches "foo bar" but not "bar ... foo".

Limits, so that a 2,000-character query cannot make the search arbitrarily
expensive: at most `MAX_TERMS` (32) terms are kept, each of at most
`MAX_TOKENS_PER_TERM` (16) tokens; the rest is ignored. A prefix needs at least
`MIN_PREFIX_CHARS` (3) characters, the size of captures_fts's prefix index:
`le*` is searched as the word "le", because a shorter prefix would merge the
doclists of a large part of the vocabulary on every query. Longer prefixes
work but are not indexed (see `needs_doclist_merge`). A term that has no
token at all (`*`, `-`, `:`, emoji) is dropped, and when no term remains
`build_match_expression` returns None: the caller answers "no results" without
querying.

"Has a token" follows the unicode61 tokenizer's default rule: a token is a run
of characters of the Unicode categories L*, N* or Co; everything else separates
tokens. FTS5 also treats code points unassigned in its (older) Unicode tables as
token characters, so Cn counts too. Python's Unicode tables are newer than
SQLite's, so for characters assigned recently (new emoji, say) the two can
disagree. That only changes whether a term is dropped here or ignored by FTS5:
a quoted string that tokenizes to nothing is an empty phrase, which FTS5 skips
in an implicit AND and which matches nothing on its own; it never causes a
syntax error.
"""

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

# captures_fts's column of the owner's token (services/archiver/db.py).
LEARNER_COLUMN = "learner_key"

MAX_TERMS = 32
MAX_TOKENS_PER_TERM = 16
# captures_fts is created with prefix='3' (services/archiver/db.py).
PREFIX_INDEX_CHARS = 3
MIN_PREFIX_CHARS = PREFIX_INDEX_CHARS

_TOKEN_CATEGORIES = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo", "Nd", "Nl", "No", "Co", "Cn"})
# Control characters end an FTS5 string early (NUL) and lone surrogates cannot
# be encoded as UTF-8; both become separators.
_DROPPED_CATEGORIES = frozenset({"Cc", "Cs"})


@dataclass(frozen=True, slots=True)
class Term:
    """One ANDed part of a query: a word or a quoted phrase, maybe a prefix."""

    text: str
    prefix: bool = False

    def to_fts(self) -> str:
        quoted = '"' + self.text.replace('"', '""') + '"'
        return quoted + "*" if self.prefix else quoted

    def words(self) -> list["Term"]:
        """The term's tokens as one-word terms; a prefix stays on the last."""
        runs = _token_runs(self.text)
        return [Term(run, self.prefix and index == len(runs) - 1) for index, run in enumerate(runs)]


def is_token_char(char: str) -> bool:
    """Whether unicode61 (default options) treats `char` as part of a token."""
    if char.isascii():
        # unicode61's ASCII table: only letters and digits are token characters.
        return char.isalnum()
    return unicodedata.category(char) in _TOKEN_CATEGORIES


def _clean(text: str) -> str:
    if text.isascii() and text.isprintable():
        return text
    return "".join(" " if unicodedata.category(c) in _DROPPED_CATEGORIES else c for c in text)


def _token_runs(text: str) -> list[str]:
    runs: list[str] = []
    start: int | None = None
    for index, char in enumerate(text):
        if is_token_char(char):
            if start is None:
                start = index
        elif start is not None:
            runs.append(text[start:index])
            start = None
    if start is not None:
        runs.append(text[start:])
    return runs


def _limit_tokens(text: str, max_tokens: int) -> str | None:
    """`text` cut after its `max_tokens`-th token; None if it has no token."""
    tokens = 0
    in_token = False
    for index, char in enumerate(text):
        if is_token_char(char):
            if not in_token:
                if tokens == max_tokens:
                    return text[:index]
                tokens += 1
                in_token = True
        else:
            in_token = False
    return text if tokens else None


def _last_token_length(text: str) -> int:
    """Characters in the last token of `text`, the one FTS5 applies `*` to."""
    end = len(text)
    while end and not is_token_char(text[end - 1]):
        end -= 1
    start = end
    while start and is_token_char(text[start - 1]):
        start -= 1
    return end - start


def split_terms(query: str) -> list[Term]:
    """The searchable terms of `query`, in order, at most MAX_TERMS of them."""
    text = _clean(query)
    terms: list[Term] = []
    i, n = 0, len(text)
    while i < n and len(terms) < MAX_TERMS:
        char = text[i]
        if char.isspace():
            i += 1
            continue
        if char == '"':
            close = text.find('"', i + 1)
            if close == -1:
                # An unbalanced quote is punctuation, not the start of a phrase.
                i += 1
                continue
            body = text[i + 1 : close]
            i = close + 1
            prefix = i < n and text[i] == "*"
            while i < n and text[i] == "*":
                i += 1
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] != '"':
                i += 1
            word = text[start:i]
            body = word.rstrip("*")
            prefix = len(body) < len(word)
        searchable = _limit_tokens(body, MAX_TOKENS_PER_TERM)
        if searchable is None:
            continue
        # A phrase cut short keeps only whole tokens, so a prefix marker on
        # the original last token no longer applies.
        prefix = prefix and searchable == body
        prefix = prefix and _last_token_length(searchable) >= MIN_PREFIX_CHARS
        terms.append(Term(searchable, prefix))
    return terms


def needs_doclist_merge(term: Term) -> bool:
    """Whether FTS5 must merge many doclists to evaluate `term`.

    True for a prefix of a length the prefix index does not cover (`learn*`):
    FTS5 then merges the doclists of every word starting with it, each time a
    cursor starts, so callers should start as few cursors as possible.
    """
    return term.prefix and _last_token_length(term.text) != PREFIX_INDEX_CHARS


def to_expression(terms: Sequence[Term]) -> str:
    """The MATCH expression ANDing `terms` (FTS5's implicit AND)."""
    return " ".join(term.to_fts() for term in terms)


def learner_token(learner: str) -> str:
    """The token captures_fts holds for `learner`: its UTF-8 bytes in hex, like
    SQLite's hex() (unicode61 folds the case), so that no two ids share one."""
    return learner.encode().hex()


def learner_filter(learner: str) -> str:
    """The MATCH expression of every capture of `learner`."""
    return f'{LEARNER_COLUMN} : "{learner_token(learner)}"'


def owned_by(learner: str | None, expression: str) -> str:
    """`expression` matching only the captures of `learner` (None: anyone's).

    The learner's words are not confined to the text columns: a word can match
    `learner_key` only in rows whose owner it is the token of, and those are
    the learner's own here (searching one's own hex id finds all one's
    captures). A column filter would make bm25() read every position list of
    the words it counts: twice the time of a search for "the".
    """
    if learner is None:
        return expression
    return f"{learner_filter(learner)} AND ({expression})"


def build_match_expression(query: str) -> str | None:
    """A MATCH expression for `query`, or None when nothing in it is searchable."""
    terms = split_terms(query)
    return to_expression(terms) if terms else None
