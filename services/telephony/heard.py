"""What a caller heard of a reply they talked over.

Twilio reports the words it had spoken (`utteranceUntilInterrupt`), as its speech
engine saw them: case, punctuation and spacing may differ from the reply as
written. The archive keeps the written reply cut after the last word spoken, so
what it holds reads as the reply did, only shorter.
"""

import re

_WORD = re.compile(r"[\w'\u2019]+")


def _norm(word: str) -> str:
    return word.lower().replace("\u2019", "'")


def heard_part(written: str, spoken: str) -> str:
    """`written` up to the end of its words that `spoken` begins with.

    When the spoken words do not follow the written ones (Twilio read out digits
    or an abbreviation as words, say), `spoken` itself is what the caller heard.
    """
    spoken_words = [_norm(m.group()) for m in _WORD.finditer(spoken)]
    if not spoken_words:
        return ""
    end = 0
    matched = 0
    for match in _WORD.finditer(written):
        if matched == len(spoken_words):
            break
        if _norm(match.group()) != spoken_words[matched]:
            break
        matched += 1
        end = match.end()
    if matched < len(spoken_words):
        # The last word may have been cut mid-way ("compl" of "complex").
        last_try = matched == len(spoken_words) - 1 and matched > 0
        if not last_try:
            return " ".join(spoken.split())
        following = _WORD.search(written, end)
        if following is None or not _norm(following.group()).startswith(spoken_words[-1]):
            return " ".join(spoken.split())
        end = following.end()
    # Punctuation straight after the last word was spoken with it (a full stop).
    tail = re.match(r"[.,;:!?\"')\]]*", written[end:])
    return written[: end + (tail.end() if tail else 0)].strip()
