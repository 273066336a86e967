from services.responder.context import ContextExchange
from services.responder.shaping import (
    EMPTY_REPLY_FALLBACK,
    clean,
    enough_sentences,
    sentences,
    shape_reply,
)
from services.responder.summary import NO_TOPICS, summarize


def test_keeps_at_most_three_sentences() -> None:
    raw = "One. Two! Three? Four. Five."
    assert clean(raw) == "One. Two! Three?"


def test_strips_role_labels_and_invented_next_turns() -> None:
    raw = "Assistant: Companion: That sounds fun. What got you started?\nUser: well, I"
    assert clean(raw) == "That sounds fun. What got you started?"


def test_vague_message_answered_without_question_gets_one() -> None:
    reply = shape_reply("cells", "Cells are the unit of life. They divide. They grow.")
    assert reply.endswith("?")
    assert len(sentences(reply)) <= 3
    assert reply.startswith("Cells are the unit of life. They divide.")


def test_detailed_message_is_left_alone() -> None:
    user = "I spent the whole afternoon reading about how mitochondria make energy"
    assert shape_reply(user, "That is a deep topic.") == "That is a deep topic."


def test_reply_with_a_question_gets_no_extra_one() -> None:
    assert shape_reply("cells", "What about them?") == "What about them?"


def test_empty_model_output_gets_a_fallback() -> None:
    assert shape_reply("hi", "  \n ") == EMPTY_REPLY_FALLBACK


def _exchange(user: str) -> ContextExchange:
    return ContextExchange(timestamp="2026-01-01T00:00:00Z", user=user, agent="ok")


def test_summary_names_the_topics_most_talked_about() -> None:
    context = [
        _exchange("I'm learning about neural networks"),
        _exchange("Neural networks use gradients"),
        _exchange("Gradients come from calculus"),
    ]
    assert summarize(context) == "We explored: neural, networks, gradients. Great conversation!"


def test_summary_of_an_empty_session() -> None:
    assert summarize([]) == NO_TOPICS


def test_enough_once_a_fourth_sentence_has_begun() -> None:
    assert not enough_sentences("One. Two. Three.")
    assert not enough_sentences("One. Two. Three. ")
    assert enough_sentences("One. Two. Three. F")
