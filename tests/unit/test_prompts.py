"""Which earlier exchanges go into the prompt: a start that stays put for a few turns."""

from services.responder.context import ContextExchange
from services.responder.prompts import stable_window


def stored(total: int, keep: int = 5) -> list[ContextExchange]:
    """The last `keep` of `total` exchanges, as the context store holds them."""
    return [
        ContextExchange(timestamp="t", user=str(n), agent="a")
        for n in range(max(1, total - keep + 1), total + 1)
    ]


def window(total: int, block: int = 3) -> list[str]:
    return [e.user for e in stable_window(stored(total), total, block)]


def test_every_exchange_is_used_until_the_store_is_full() -> None:
    assert window(0) == []
    assert window(5) == ["1", "2", "3", "4", "5"]


def test_the_prompt_starts_the_same_way_for_block_turns_in_a_row() -> None:
    starts = [window(total)[0] for total in range(6, 15)]
    assert starts == ["4", "4", "4", "7", "7", "7", "10", "10", "10"]
    for total in range(6, 40):
        kept = window(total)
        # The newest exchanges are always there, and never fewer than 3.
        assert kept[-1] == str(total) and 3 <= len(kept) <= 5


def test_block_one_is_the_plain_sliding_window() -> None:
    assert window(9, block=1) == ["5", "6", "7", "8", "9"]


def test_a_count_missing_or_lower_than_the_context_uses_the_context() -> None:
    context = stored(7)
    assert stable_window(context, 0, 3) == context
