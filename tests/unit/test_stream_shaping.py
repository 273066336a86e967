"""Shaping a reply while it streams never takes back what was sent: fed a reply in any
pieces, the pieces sent join to exactly the reply shaped as a whole."""

from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.responder.shaping import ReplyShaper, shape_reply

VAGUE = "cells"
DETAILED = "I spent the whole afternoon reading about how mitochondria make energy"

# Replies as small models write them: labels, rambling, invented next turns.
REAL_REPLIES = [
    "Plants make food from sunlight. They use water and air. That process is called "
    "photosynthesis.",
    "Assistant: That sounds fascinating! What got you interested in volcanoes?",
    "Companion: Cells are the basic unit of life. They divide and grow. Each has a "
    "nucleus. Some have many.",
    "That's a great question.\nUser: tell me more\nAssistant: Sure!",
    "  AI :  Hmm, interesting.   Tides follow the moon.\n\nWhy do you ask?",
    "Bots are fun. Both of us agree. AIM high! Really.",
    "I think so. Maybe not? Let us see. More text here.",
    "One. Two. Three. Four. Five.",
    "No punctuation at all just words flowing on and on",
    "Learner: hi",
    "Assistant",
    "\n\n",
    "Wow!!! That's... a lot. Could you explain more? Thanks.",
    "Gravity pulls things down.\nHuman: really?",
]

WORDS = ["cells", "divide", "Tides", "follow", "the", "moon", "AI", "Bot", "user", "Us"]
PIECES = st.sampled_from(
    [*WORDS, ". ", "! ", "? ", ", ", " ", "  ", "\n", "\n\n", "\t", ":", "Assistant:",
     "Companion :", "ai:", "User:", "\nUser: ", "\nlearner :", "Human", "?"]
)  # fmt: skip


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    pieces, last = [], 0
    for point in [*points, len(text)]:
        pieces.append(text[last:point])
        last = point
    return [p for p in pieces if p]


def stream_through(user: str, pieces: list[str]) -> tuple[str, str]:
    """What the learner receives, piece by piece, and the reply shaped as a whole
    from what the model had written when generation stopped."""
    shaper = ReplyShaper(user)
    consumed = ""
    received = ""
    for piece in pieces:
        consumed += piece
        received += shaper.feed(piece)
        if shaper.done:
            break
    received += shaper.finish()
    return received, shape_reply(user, consumed)


@given(
    reply=st.sampled_from(REAL_REPLIES),
    user=st.sampled_from([VAGUE, DETAILED]),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=40),
)
@settings(max_examples=400)
def test_real_replies_in_any_pieces_join_to_the_shaped_reply(
    reply: str, user: str, cuts: list[int]
) -> None:
    received, whole = stream_through(user, split(reply, cuts))
    assert received == whole


@given(
    pieces=st.lists(PIECES, max_size=60),
    user=st.sampled_from([VAGUE, DETAILED]),
)
@settings(max_examples=1500)
# Found by hypothesis: a learner's label can span a newline ("\nuser\n:"), so text
# after an earlier newline must be held too.
@example(pieces=["cells", "\n", "user", "\n", ":"], user=VAGUE)
@example(pieces=["Tides rise.", "\n ", "learner ", "\n\n", ": more"], user=DETAILED)
def test_any_model_output_in_any_pieces_joins_to_the_shaped_reply(
    pieces: list[str], user: str
) -> None:
    received, whole = stream_through(user, pieces)
    assert received == whole


@given(
    pieces=st.lists(PIECES, max_size=60),
    user=st.sampled_from([VAGUE, DETAILED]),
)
@settings(max_examples=800)
def test_what_is_sent_is_never_contradicted_by_what_follows(pieces: list[str], user: str) -> None:
    """Every prefix sent is a prefix of the reply shaped from any longer output."""
    shaper = ReplyShaper(user)
    consumed = ""
    for n, piece in enumerate(pieces):
        consumed += piece
        shaper.feed(piece)
        rest = "".join(pieces[n + 1 :])
        assert shape_reply(user, consumed + rest).startswith(shaper.sent)


def test_words_go_out_as_soon_as_they_are_whole() -> None:
    shaper = ReplyShaper(DETAILED)
    assert shaper.feed("Pla") == ""
    assert shaper.feed("nts ") == "Plants"
    assert shaper.feed("make food.") == " make"
    assert shaper.feed(" They") == " food."
    assert shaper.finish() == " They"


def test_a_role_label_is_held_until_it_is_known_not_to_be_one() -> None:
    shaper = ReplyShaper(DETAILED)
    assert shaper.feed("Assistant") == ""
    assert shaper.feed(": Hello there. ") == "Hello there."


def test_a_vague_message_gets_its_question_appended_never_swapped_in() -> None:
    shaper = ReplyShaper(VAGUE)
    sent = shaper.feed("Cells are small. They divide. They grow. Also")
    assert sent == "Cells are small. They divide."
    assert shaper.done
    tail = shaper.finish()
    assert (sent + tail).startswith(sent) and tail.endswith("?")
    assert sent + tail == shape_reply(VAGUE, "Cells are small. They divide. They grow. Also")


def test_a_new_line_that_may_start_the_learners_turn_is_held() -> None:
    shaper = ReplyShaper(DETAILED)
    sent = "".join(shaper.feed(p) for p in ["Tides follow the moon.\n", "User", " ", ": and"])
    assert sent == "Tides follow the moon."
    assert shaper.done
    assert sent + shaper.finish() == "Tides follow the moon."
