"""Clean-up of what a speech recogniser heard, before anyone answers it.

Whisper was trained on subtitled video, so on silence, noise or music it writes
what subtitles say there: tags such as "[BLANK_AUDIO]" or "(upbeat music)",
YouTube outros ("Thanks for watching!"), credits ("Subtitles by the Amara.org
community"), a lone "you" or "Thank you.", or one phrase repeated in a loop.
`clean_transcript` removes those, tidies spacing and punctuation, and returns ""
when nothing real was said (the caller then answers "I didn't catch that").
Real speech is otherwise left as it was heard.

The phrase lists below are deliberately short and matched whole (per sentence),
so that a learner who says "thank you for explaining" keeps every word.
"""

import re

__all__ = ["HALLUCINATED_ALONE", "HALLUCINATED_TRAILING", "clean_transcript"]

# Sentences dropped when they are the whole transcript or its last sentences:
# outros and credits no learner dictates to a tutor. Matched against a sentence
# in lower case with punctuation turned into spaces ("Amara.org" -> "amara org").
HALLUCINATED_TRAILING: tuple[str, ...] = (
    # "Thanks for watching!", "Thank you so much for watching this video."
    r"(thank you|thanks)( (so|very) much)?( all| everyone| guys)? for watching"
    r"( (this|the|my) video)?( and (i'll )?see you (next time|in the next (video|one)))?",
    # "Please subscribe", "Don't forget to like and subscribe to my channel."
    r"(please )?(don't forget to |remember to )?((like|share)( and)? )*subscribe"
    r"( to (my|our|the) channel)?( for more( videos)?)?",
    # "See you in the next video.", "I'll see you next time."
    r"(i'll |we'll )?see you (guys )?(in the )?next (time|video|one)",
    # "Subtitles by the Amara.org community", "Translated by ...", "Transcript: ..."
    r"(subtitles?|captions?|captioning|subtitled|transcription|transcribed|transcript"
    r"|translated|translation|english subtitles)( (by|from) .*| .*amara org.*)?",
    r".*\bamara org\b.*",
    # A bare web address ("www.mooji.org").
    r"(https? )?www( [a-z0-9]+)+",
    # "© BBC 2021": the © is gone from the key, the raw check below catches it.
    r"copyright .*",
)

# Whole transcripts (every sentence of them) that Whisper writes on silence or
# noise. A learner who really says only "Thank you." is told that nothing was
# caught: the cost of not answering silence as if it were speech. "Bye." is kept:
# it is how a learner ends a session by voice, and tiny.en rarely invents it.
HALLUCINATED_ALONE: tuple[str, ...] = (
    r"you",
    r"(thank you|thanks)( (so|very) much)?",
    # Fillers only: "Um.", "Hmm.", "Uh, uh."
    r"((um+|uh+|uhm|erm|er|hmm+|mm+|mhm|ah+|oh+|huh)( |$))+",
)

_TRAILING = re.compile("|".join(f"(?:{p})" for p in HALLUCINATED_TRAILING))
_ALONE = re.compile("|".join(f"(?:{p})" for p in HALLUCINATED_ALONE))

# Square brackets and special tokens never hold speech in Whisper's output.
_BRACKETED = re.compile(r"\[[^\[\]]*\]|<\|[^|<>]*\|>")
# Stage directions: "*laughs*", "*sigh*".
_STARRED = re.compile(r"\*[^*\n]{1,40}\*")
# Music notes, and the lyrics Whisper invents between them.
_NOTES = "♪♫♬♩🎵🎶"
_MUSIC = re.compile(f"[{_NOTES}]+(?:[^{_NOTES}]{{0,200}}[{_NOTES}]+)?")
# Parentheses can hold real speech ("the answer (I think) is four"), so only
# descriptions of sounds are dropped: "(music)", "(upbeat music)", "(coughs)".
_PARENTHESISED = re.compile(r"\(([^()]{0,60})\)")
_SOUND_WORDS = re.compile(
    r"\b(music|musical|instrumental|singing|sings|humming|song|laugh\w*|chuckl\w*|"
    r"giggl\w*|applause|clapping|claps|cheer\w*|cough\w*|sigh\w*|sniff\w*|breath\w*|"
    r"inhales?|exhales?|gasps?|silence|silent|noise|static|inaudible|indistinct|"
    r"unintelligible|mumbl\w*|muffled|whisper\w*|beep\w*|chirp\w*|birds?|wind|rain|"
    r"footsteps|door|typing|crowd|blank|sound\w*|speaking|foreign|no audio|outro|intro)\b",
    re.IGNORECASE,
)

# Whisper's decoding loops repeat a phrase many times; people repeat a single
# word three times for emphasis ("no, no, no"), so a single word needs four.
_LOOP_MIN_REPEATS = 3
_LOOP_MIN_REPEATS_ONE_WORD = 4
_LOOP_MAX_WORDS = 30

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
_TRAILING_PUNCT = re.compile(r"[.,;:!?…]+$")


def _key(text: str) -> str:
    """Lower case, apostrophes kept, every other non-alphanumeric a space."""
    lowered = text.lower().replace("\u2019", "'")
    return " ".join(re.sub(r"[^\w']+|_", " ", lowered).split())


def _drop_tags(text: str) -> str:
    text = _BRACKETED.sub(" ", text)
    text = _STARRED.sub(" ", text)
    text = _MUSIC.sub(" ", text)
    return _PARENTHESISED.sub(
        lambda m: " " if not m[1].strip() or _SOUND_WORDS.search(m[1]) else m[0], text
    )


def _tidy(text: str) -> str:
    text = " ".join(text.split())
    text = re.sub(r" +([,.!?;:…])", r"\1", text)
    text = re.sub(r"([,;:])[,;:]+", r"\1", text)
    text = re.sub(r"[!?]{2,}", lambda m: "?!" if len(set(m[0])) > 1 else m[0][0], text)
    text = re.sub(r"\.{4,}", "...", text)
    # A comma or stop left in front of a stop by a removed tag: "Hello, [MUSIC]."
    text = re.sub(r"[,;:]+(?=[.!?])", "", text)
    text = re.sub(r"^[\s\-\u2013\u2014.,;:!?\u2026]+", "", text)
    return re.sub(r"[\s\-\u2013\u2014,;:]+$", "", text)


def _collapse_loops(text: str) -> str:
    """Keep one copy of a word sequence repeated in a row (see the thresholds)."""
    tokens = text.split(" ")
    keys = [_key(t) for t in tokens]
    out: list[str] = []
    i = 0
    while i < len(tokens):
        found: tuple[int, int] | None = None
        for n in range(1, _LOOP_MAX_WORDS + 1):
            needed = _LOOP_MIN_REPEATS_ONE_WORD if n == 1 else _LOOP_MIN_REPEATS
            if i + n * needed > len(tokens):
                break
            unit = keys[i : i + n]
            if not any(unit):
                continue
            repeats = 1
            while keys[i + repeats * n : i + (repeats + 1) * n] == unit:
                repeats += 1
            if repeats >= needed:
                found = (n, repeats)
                break
        if found is None:
            out.append(tokens[i])
            i += 1
            continue
        n, repeats = found
        # The first copy's words (its capitals) with the last copy's closing
        # punctuation: "going to, going to, going to the shop" reads on.
        copy = tokens[i : i + n]
        last = tokens[i + repeats * n - 1]
        ending = _TRAILING_PUNCT.search(last)
        copy[-1] = _TRAILING_PUNCT.sub("", copy[-1]) + (ending[0] if ending else "")
        out.extend(copy)
        i += n * repeats
    return " ".join(out)


def _is_trailing_artefact(sentence: str) -> bool:
    return sentence.lstrip().startswith("©") or _TRAILING.fullmatch(_key(sentence)) is not None


def _is_alone_artefact(sentence: str) -> bool:
    return _is_trailing_artefact(sentence) or _ALONE.fullmatch(_key(sentence)) is not None


def _capitalise(text: str) -> str:
    first_word = text.split(" ", 1)[0]
    # "iPhone" and "eBay" keep their case.
    if text[:1].islower() and first_word[1:] == first_word[1:].lower():
        return text[0].upper() + text[1:]
    return text


def clean_transcript(text: str) -> str:
    """The learner's words without recogniser artefacts, or "" if nothing was said."""
    text = _tidy(_drop_tags(text))
    # Loops can nest ("a b a b a b" inside a repeated sentence): a few passes.
    for _ in range(3):
        collapsed = _tidy(_collapse_loops(text))
        if collapsed == text:
            break
        text = collapsed
    sentences = [s for s in _SENTENCE_END.split(text) if s]
    while sentences and _is_trailing_artefact(sentences[-1]):
        sentences.pop()
    if all(_is_alone_artefact(s) for s in sentences):
        return ""
    text = _tidy(" ".join(sentences))
    if not any(ch.isalnum() for ch in text):
        return ""
    return _capitalise(text)
