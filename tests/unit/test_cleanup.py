"""Transcript clean-up: Whisper's artefacts go, real speech stays."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.transcriber.cleanup import clean_transcript

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "audio"
SPOKEN = sorted(
    {e["text"] for e in json.loads((FIXTURES / "manifest.json").read_text())["files"] if e["text"]}
)

REAL_SPEECH = [
    *SPOKEN,
    "What is photosynthesis?",
    "I think plants need sunlight, water and carbon dioxide.",
    "Thank you for explaining photosynthesis.",
    "Thanks, that makes sense now.",
    "Can you tell me why the sky is blue?",
    "The answer (I think) is four.",
    "What is 3.5 times 2?",
    "I watched a video about volcanoes. It was great!",
    "No, no, no, that's not what I meant.",
    "iPhone batteries use lithium.",
    "I'm done for today.",
    "Bye. I learned a lot today.",
    "You know what, I finally understand fractions.",
    "Why do leaves change colour in autumn... is it the cold?",
    "E = mc squared, right?",
    "Tell me about the French Revolution.",
    "Subscribe means to sign up for something, right?",
]


@pytest.mark.parametrize("text", REAL_SPEECH)
def test_real_speech_passes_unchanged(text: str) -> None:
    assert clean_transcript(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "you",
        " you",
        "You.",
        "Thank you.",
        " Thank you very much.",
        "Thanks.",
        "Thank you. Thanks.",
        "Thanks for watching!",
        "Thank you for watching.",
        "Thank you so much for watching this video and see you next time.",
        "Please subscribe.",
        "Don't forget to like and subscribe to my channel!",
        "Like & subscribe",
        "See you in the next video.",
        "Subtitles by the Amara.org community",
        "Transcribed by ESO, translated by —",
        "© BBC 2021",
        "www.mooji.org",
        "Um.",
        "Uh, um, hmm.",
        "...",
        " - ",
        "!",
    ],
)
def test_stock_phrases_alone_mean_nothing_was_said(text: str) -> None:
    assert clean_transcript(text) == ""


@pytest.mark.parametrize(
    "text",
    [
        "[BLANK_AUDIO]",
        "[MUSIC]",
        "[Music]",
        "[ Silence ]",
        "[silence]",
        "(music)",
        "(upbeat music)",
        "(Upbeat Music)",
        "(soft piano music playing)",
        "(laughs)",
        "(coughing)",
        "(speaking in foreign language)",
        "*laughs*",
        "*sigh*",
        "♪",
        "♪♪♪",
        "♪ la la la ♪",
        "🎵",
        "[MUSIC] (applause) ♪",
        "<|nospeech|>",
        "[BLANK_AUDIO] Thank you.",
    ],
)
def test_tags_alone_mean_nothing_was_said(text: str) -> None:
    assert clean_transcript(text) == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[BLANK_AUDIO] What is gravity?", "What is gravity?"),
        ("What is gravity? [BLANK_AUDIO]", "What is gravity?"),
        ("(upbeat music) What is gravity?", "What is gravity?"),
        ("What is *laughs* gravity?", "What is gravity?"),
        ("♪ Na na na ♪ What is gravity?", "What is gravity?"),
        ("Hello, [MUSIC].", "Hello."),
        ("Hello [inaudible] world.", "Hello world."),
    ],
)
def test_tags_are_cut_out_of_speech(text: str, expected: str) -> None:
    assert clean_transcript(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Photosynthesis makes sugar. Thanks for watching!", "Photosynthesis makes sugar."),
        ("What is gravity? Please subscribe.", "What is gravity?"),
        (
            "What is gravity? Thanks for watching. Subtitles by the Amara.org community",
            "What is gravity?",
        ),
        ("Why is the sky blue? © Transcript Emily Beynon", "Why is the sky blue?"),
        # Not trailing: kept, it may be what the learner said.
        ("Thanks for watching, she said. Then she left.", None),
        # "Thank you." is dropped only alone: after speech it is the learner's.
        ("That helped a lot. Thank you.", None),
    ],
)
def test_trailing_outros_are_dropped(text: str, expected: str | None) -> None:
    assert clean_transcript(text) == (text if expected is None else expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I like it. I like it. I like it.", "I like it."),
        ("I like it. I like it. I like it. I like it. I like it.", "I like it."),
        ("What is a cell? What is a cell? What is a cell? What is a cell?", "What is a cell?"),
        ("Thank you. Thank you. Thank you.", ""),
        ("the the the the cat sat down", "The cat sat down"),
        ("I'm going to, going to, going to the shop.", "I'm going to the shop."),
        ("Plants need light. Okay, okay, okay, okay, okay.", "Plants need light. Okay."),
        (
            "So the mitochondria so the mitochondria so the mitochondria is",
            "So the mitochondria is",
        ),
        ("a b a b a b a b c", "A b c"),
        # Nested: a repeated pair inside a repeated sentence.
        ("Go go go go now. Go go go go now. Go go go go now.", "Go now."),
    ],
)
def test_loops_keep_one_copy(text: str, expected: str) -> None:
    assert clean_transcript(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "I like it. I like it.",  # twice is speech
        "No, no, no, that's wrong.",  # one word three times is emphasis
        "Very, very, very big.",
    ],
)
def test_short_repeats_are_speech(text: str) -> None:
    assert clean_transcript(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  what   is\tgravity ?  ", "What is gravity?"),
        ("hello , world !", "Hello, world!"),
        ("Really!!", "Really!"),
        ("Really???", "Really?"),
        ("Really?!?!", "Really?!"),
        ("Wait.... what", "Wait... what"),
        ("Wait... what", "Wait... what"),
        ("Wait.......... what", "Wait... what"),
        ("First,, second", "First, second"),
        ("- so what happens next?", "So what happens next?"),
        ("— and then?", "And then?"),
        ("...and then what?", "And then what?"),
        ("  , so plants eat light", "So plants eat light"),
        ("what about mars", "What about mars"),
        ("eBay sells things", "eBay sells things"),
        ("\u00e9t\u00e9 is summer in French", "\u00c9t\u00e9 is summer in French"),
        ("line one\nline two", "Line one line two"),
        ("Trailing comma,", "Trailing comma"),
    ],
)
def test_normalisation(text: str, expected: str) -> None:
    assert clean_transcript(text) == expected


def test_cleaning_twice_changes_nothing_more() -> None:
    for text in [*REAL_SPEECH, "[MUSIC] what is gravity ?? Thanks for watching!"]:
        once = clean_transcript(text)
        assert clean_transcript(once) == once


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_gives_text_and_is_stable(text: str) -> None:
    cleaned = clean_transcript(text)
    assert isinstance(cleaned, str)
    assert cleaned == cleaned.strip()
    assert clean_transcript(cleaned) == cleaned


def test_a_spoken_goodbye_is_kept() -> None:
    # It ends the session by voice (the responder reads it as end_conversation).
    assert clean_transcript(" Bye.") == "Bye."
