"""How a streamed reply is cut into pieces, and how waiting pieces are joined."""

import asyncio

from services.responder.pieces import MAX_WORDS, PieceCutter
from shared.events import AnyReply, ConversationReply, DeltaReply, utcnow
from shared.replies import coalesce_pieces


def cut(settled: list[str]) -> list[str]:
    cutter = PieceCutter()
    pieces = [p for text in settled if (p := cutter.add(text)) is not None]
    last = cutter.flush()
    return [*pieces, last] if last else pieces


def test_the_first_word_goes_out_alone_then_clauses_and_runs_of_words() -> None:
    words = ["Tides", " rise", " and", " fall,", " pulled", " by", " the", " moon."]
    pieces = cut(words)
    assert pieces[0] == "Tides"
    assert pieces[1] == " rise and fall,"
    assert "".join(pieces) == "".join(words)


def test_a_piece_never_holds_more_than_a_few_words() -> None:
    words = [f" word{n}" for n in range(40)]
    pieces = cut(["First", *words])
    assert all(len(p.split()) <= MAX_WORDS for p in pieces)
    # About one write per MAX_WORDS words, not one per word.
    assert len(pieces) <= 2 + len(words) // MAX_WORDS
    assert "".join(pieces) == "First" + "".join(words)


def test_white_space_alone_is_not_a_piece() -> None:
    cutter = PieceCutter()
    assert cutter.add("") is None
    assert cutter.add("  ") is None
    assert cutter.flush() == "  "
    assert cutter.flush() is None


def delta(text: str) -> DeltaReply:
    return DeltaReply(in_reply_to="e1", text=text)


def test_pieces_waiting_together_are_joined_and_the_end_is_kept_apart() -> None:
    queue: asyncio.Queue[AnyReply] = asyncio.Queue()
    end = ConversationReply(
        in_reply_to="e1", user_text="u", agent_text="a b c", intent="statement", timestamp=utcnow()
    )
    for reply in (delta(" b"), delta(" c"), end):
        queue.put_nowait(reply)
    joined, after = coalesce_pieces(delta("a"), queue)
    assert joined.text == "a b c"
    assert after == end
    assert queue.empty()
    alone, nothing = coalesce_pieces(delta("x"), queue)
    assert alone.text == "x" and nothing is None
