"""How a streamed reply is cut into pieces, and how waiting pieces are joined."""

import asyncio

from services.responder.pieces import MAX_WORDS, MIN_INTERVAL_S, PieceCutter
from shared.events import AnyReply, ConversationReply, DeltaReply, utcnow
from shared.replies import coalesce_pieces


def cut(settled: list[str], every_s: float) -> list[str]:
    """The pieces of words that settle `every_s` apart; the rest rides with the reply."""
    cutter = PieceCutter()
    pieces = [
        p for n, text in enumerate(settled) if (p := cutter.add(text, n * every_s)) is not None
    ]
    last = cutter.rest()
    return [*pieces, last] if last else pieces


WORDS = ["Tides", " rise", " and", " fall,", " pulled", " by", " the", " moon."]


def test_the_first_word_goes_out_alone_then_clauses() -> None:
    pieces = cut(WORDS, every_s=0.1)
    assert pieces == ["Tides", " rise and fall,", " pulled by the moon."]


def test_a_piece_holds_a_few_words_at_a_reading_pace() -> None:
    words = [f" word{n}" for n in range(40)]
    pieces = cut(["First", *words], every_s=0.1)
    assert all(len(p.split()) <= MAX_WORDS for p in pieces)
    # About one write per MAX_WORDS words, not one per word.
    assert len(pieces) <= 2 + len(words) // MAX_WORDS
    assert "".join(pieces) == "First" + "".join(words)


def test_a_model_faster_than_reading_gets_fewer_longer_pieces() -> None:
    # All at once (an instant model): the first word, then the rest with the reply.
    assert cut(WORDS, every_s=0.0) == ["Tides", "".join(WORDS[1:])]
    # Faster than MIN_INTERVAL_S: pieces wait for the interval, and grow.
    fast = cut(WORDS * 3, every_s=MIN_INTERVAL_S / 4)
    assert len(fast) < len(cut(WORDS * 3, every_s=0.1))
    assert "".join(fast) == "".join(WORDS * 3)


def test_white_space_alone_is_not_a_piece() -> None:
    cutter = PieceCutter()
    assert cutter.add("", 0.0) is None
    assert cutter.add("  ", 0.0) is None
    assert cutter.rest() == "  "
    assert cutter.rest() is None


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
