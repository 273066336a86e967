"""Turning raw model output into a companion reply: short, clean, and inviting.

Small models ramble, prefix their turn with a role name, or end without a
question; v1's post-processing and follow-up fallback fix that here.
"""

import re
import zlib

MAX_SENTENCES = 3
# Below this many words a learner's message is vague enough to deserve a question.
VAGUE_WORDS = 8

_ROLE_PREFIX = re.compile(r"^\s*(assistant|companion|ai|bot)\s*:\s*", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")
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


def clean(raw: str) -> str:
    """Strip role labels and extra whitespace; keep at most three sentences."""
    text = raw.strip()
    while True:
        stripped = _ROLE_PREFIX.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    # A model that starts writing the learner's next turn has finished its own.
    text = re.split(r"\n\s*(user|learner|human)\s*:", text, flags=re.IGNORECASE)[0]
    text = " ".join(text.split())
    return " ".join(sentences(text)[:MAX_SENTENCES])


def needs_follow_up(user_text: str, reply: str) -> bool:
    """v1's fallback: a vague message answered without a question gets one."""
    return "?" not in reply and len(user_text.split()) < VAGUE_WORDS


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
