"""Cutting a streamed reply into the pieces sent to the asker.

A piece per token would cost a Redis write (and a WebSocket message) per token;
a piece per sentence would hold back the first words for as long as the first
sentence takes. The first word goes out alone, at once (it is what the learner
waits for); after it, a piece ends at a clause (`,` `;` `:`) or a sentence end, or
once it holds `MAX_WORDS` words: about one write per three to five tokens, and a
speech synthesiser downstream still gets whole clauses.
"""

import re

MAX_WORDS = 6
_CLAUSE_END = re.compile(r"[,;:.!?…]['\")\]]*$")


class PieceCutter:
    def __init__(self) -> None:
        self._buffer = ""
        self._first = True

    def add(self, text: str) -> str | None:
        """Take settled reply text; return a piece to send now, if one is due."""
        self._buffer += text
        if not self._buffer.strip():
            return None
        if (
            self._first
            or _CLAUSE_END.search(self._buffer)
            or len(self._buffer.split()) >= MAX_WORDS
        ):
            return self.flush()
        return None

    def flush(self) -> str | None:
        """Whatever is held, as a last piece (None if nothing is)."""
        piece, self._buffer = self._buffer, ""
        self._first = False
        return piece or None
