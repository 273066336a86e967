"""v1's simple intent classification: question, reflection, statement, or the end."""

import re

from shared.events import Intent

_END = re.compile(
    r"^(good ?bye|bye|bye bye|see you( later)?|that'?s all( for (now|today))?|"
    r"i'?m done( for (now|today))?|end (the )?(session|conversation)|stop|quit)\b"
)
_QUESTION_START = {
    "what", "why", "how", "when", "where", "who", "whom", "whose", "which",
    "can", "could", "would", "should", "is", "are", "was", "were",
    "do", "does", "did", "will", "shall", "may", "might", "have", "has",
}  # fmt: skip
# Requests for an explanation ask as much as a question does.
_REQUEST_START = re.compile(r"^(tell me|explain|describe|help me understand|can you)\b")
_REFLECTION = re.compile(
    r"\b(i think|i thought|i reali[sz]ed?|i learn(ed|t)|i noticed|i wonder|i feel|"
    r"i understand|i believe|it seems|makes me think|i guess)\b"
)
# An end phrase inside a long sentence ("I can't stop thinking...") is not a goodbye.
_MAX_END_WORDS = 6


def detect_intent(text: str) -> Intent:
    lowered = " ".join(text.lower().replace("\u2019", "'").split())
    words = re.findall(r"[a-z']+", lowered)
    if words and len(words) <= _MAX_END_WORDS and _END.match(" ".join(words)):
        return "end_conversation"
    if lowered.rstrip().endswith("?") or (words and words[0] in _QUESTION_START):
        return "question"
    if _REQUEST_START.match(" ".join(words)):
        return "question"
    if _REFLECTION.search(lowered):
        return "reflection"
    return "statement"
