"""Turning raw model output into a companion reply: short, clean, and inviting.

Small models ramble, prefix their turn with a role name, or end without a
question; v1's post-processing and follow-up fallback fix that here.

The reply streams to the learner as the model writes it, so shaping never takes
back text already sent: `ReplyShaper` releases only text that no later token can
change (whole words, after any role label, before a possible invented next turn),
and the fallback question is only ever appended. Fed the model's output in any
pieces, it ends with exactly `shape_reply(user_text, raw)`.
"""

import re
import zlib

MAX_SENTENCES = 3
# Below this many words a learner's message is vague enough to deserve a question.
VAGUE_WORDS = 8

_ROLES = ("assistant", "companion", "ai", "bot")
_TURNS = ("user", "learner", "human")
_ROLE_PREFIX = re.compile(r"^\s*(assistant|companion|ai|bot)\s*:\s*", re.IGNORECASE)
_NEXT_TURN = re.compile(r"\n\s*(user|learner|human)\s*:", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")
_LAST_GAP = re.compile(r"\s\S*$")
_FOLLOW_UPS = (
    "What made you think of that?",
    "Could you tell me a bit more about that?",
    "How does that connect to what you're learning right now?",
    "What part of it interests you most?",
)
EMPTY_REPLY_FALLBACK = "I'd love to hear more. What's on your mind about that?"


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def enough_sentences(generated: str) -> bool:
    """True once the model has finished more sentences than a reply keeps.

    A fourth sentence has begun only after the third ended, so everything kept is
    complete; the rest would be generated (and waited for) only to be cut.
    """
    return len(sentences(generated)) > MAX_SENTENCES


def _strip_roles(text: str) -> str:
    while True:
        stripped = _ROLE_PREFIX.sub("", text, count=1)
        if stripped == text:
            return text
        text = stripped


def clean(raw: str) -> str:
    """Strip role labels and extra whitespace; keep at most three sentences."""
    text = _strip_roles(raw.strip())
    # A model that starts writing the learner's next turn has finished its own.
    text = _NEXT_TURN.split(text, maxsplit=1)[0]
    text = " ".join(text.split())
    return " ".join(sentences(text)[:MAX_SENTENCES])


def is_vague(user_text: str) -> bool:
    return len(user_text.split()) < VAGUE_WORDS


def needs_follow_up(user_text: str, reply: str) -> bool:
    """v1's fallback: a vague message answered without a question gets one."""
    return "?" not in reply and is_vague(user_text)


def follow_up_for(user_text: str) -> str:
    # Stable per message, so a redelivered utterance gets the same wording.
    return _FOLLOW_UPS[zlib.crc32(user_text.encode()) % len(_FOLLOW_UPS)]


def shape_reply(user_text: str, raw: str) -> str:
    reply = clean(raw)
    if not reply:
        return EMPTY_REPLY_FALLBACK
    if needs_follow_up(user_text, reply):
        kept = sentences(reply)[: MAX_SENTENCES - 1]
        reply = " ".join([*kept, follow_up_for(user_text)])
    return reply


def _may_become(text: str, words: tuple[str, ...]) -> bool:
    """Whether more text could still turn `text` into one of `words` and a colon."""
    lowered = text.lower()
    for word in words:
        if word.startswith(lowered):
            return True
        if lowered.startswith(word) and not lowered[len(word) :].strip():
            return True
    return False


def _possible_turn(text: str) -> int | None:
    """Where, after a newline, the learner's turn may be beginning; None if nowhere."""
    newline = text.find("\n")
    while newline >= 0:
        if _may_become(text[newline + 1 :].lstrip(), _TURNS):
            return newline
        newline = text.find("\n", newline + 1)
    return None


class ReplyShaper:
    """Shapes a reply while it streams: `feed` returns the text that may be sent
    now, `finish` the rest once the model has ended (or been stopped)."""

    def __init__(self, user_text: str) -> None:
        self._user_text = user_text
        self._raw = ""
        self.sent = ""
        # Cheap signs that the reply may be over, so `done` is worked out only then.
        self._ends = 0
        self._may_turn = False
        self._done = False

    @property
    def done(self) -> bool:
        """Nothing the model writes from here on can be kept: stop generating."""
        return self._done

    def feed(self, piece: str) -> str:
        """Take the model's next piece; return the text that may be sent now."""
        self.take(piece)
        return self._advance(self._settled())

    def take(self, piece: str) -> None:
        """Take the model's next piece without releasing text (an asker that waits
        for the whole reply): only `done` is kept up to date."""
        self._raw += piece
        self._ends += sum(piece.count(mark) for mark in ".!?")
        self._may_turn = self._may_turn or ("\n" in self._raw and ":" in piece)
        # A fourth sentence needs three ends before it; a learner's turn, a colon.
        if not self._done and (self._ends >= MAX_SENTENCES or self._may_turn):
            text = _strip_roles(self._raw.lstrip())
            self._done = _NEXT_TURN.search(text) is not None or enough_sentences(
                " ".join(text.split())
            )

    def finish(self) -> str:
        """The end of the reply; with what was sent, exactly `shape_reply(...)`."""
        return self._advance(shape_reply(self._user_text, self._raw))

    def _advance(self, visible: str) -> str:
        if not visible.startswith(self.sent):
            # Cannot happen (the property tests say so); if it did, what was sent
            # stands and nothing contradicting it follows.
            return ""
        new, self.sent = visible[len(self.sent) :], visible
        return new

    def _settled(self) -> str:
        """The part of the reply that no later token can change."""
        text = _strip_roles(self._raw.lstrip())
        if not text or (":" not in text and _may_become(text, _ROLES)):
            # It may still turn out to be a role label ("Assistant:"), not a word.
            return ""
        turn = _NEXT_TURN.search(text)
        if turn is not None:
            text = text[: turn.start()]
        else:
            # The learner's label may still come after any newline that only
            # whitespace and the start of a label follow ("\nuser\n" may become
            # "\nuser\n:"), so the text is held from the first such newline.
            newline = _possible_turn(text)
            if newline is not None:
                text = text[:newline]
            # A word still being written may grow: only whole words are settled.
            elif text and not text[-1].isspace():
                last_gap = _LAST_GAP.search(text)
                text = text[: last_gap.start()] if last_gap else ""
        kept = sentences(" ".join(text.split()))
        complete = len(kept) > MAX_SENTENCES or turn is not None
        kept = kept[:MAX_SENTENCES]
        # A vague message answered without a question so far: its third sentence
        # is sent only once it is known to ask one (otherwise the fallback
        # question takes its place), so it is held until it has ended.
        if (
            len(kept) == MAX_SENTENCES
            and is_vague(self._user_text)
            and "?" not in " ".join(kept[:-1])
            and not (complete and "?" in kept[-1])
        ):
            kept = kept[:-1]
        return " ".join(kept)
