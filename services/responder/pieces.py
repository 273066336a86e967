"""Cutting a streamed reply into the pieces sent to the asker.

A piece per token would cost a Redis write (and a WebSocket message) per token;
a piece per sentence would hold back the first words for as long as the first
sentence takes. So: the first word goes out alone, at once (it is what the
learner waits for); after it, a piece ends at a clause (`,` `;` `:`) or a sentence
end, or once it holds `MAX_WORDS` words, but never sooner than `MIN_INTERVAL_S`
after the previous piece: a model writing faster than anyone reads (a hosted model
at 100 tokens/s, the benchmark's instant one) gets fewer, longer pieces. Whatever
is left when the model ends rides with the reply itself (`ConversationReply.
last_piece`), so a short fast reply costs one extra write, not one per clause.
"""

import re
import time

MAX_WORDS = 6
MIN_INTERVAL_S = 0.05
_CLAUSE_END = re.compile(r"[,;:.!?…]['\")\]]*$")


class PieceCutter:
    def __init__(self) -> None:
        self._buffer = ""
        self._last_sent: float | None = None

    def add(self, text: str, now: float | None = None) -> str | None:
        """Take settled reply text; return a piece to send now, if one is due."""
        self._buffer += text
        if not self._buffer.strip():
            return None
        now = time.monotonic() if now is None else now
        if self._last_sent is not None and (
            now - self._last_sent < MIN_INTERVAL_S
            or not (_CLAUSE_END.search(self._buffer) or len(self._buffer.split()) >= MAX_WORDS)
        ):
            return None
        self._last_sent = now
        piece, self._buffer = self._buffer, ""
        return piece

    def rest(self, text: str = "") -> str | None:
        """Everything held, with `text`: the reply's last piece (None if empty)."""
        piece, self._buffer = self._buffer + text, ""
        return piece or None
