import pytest

from services.responder.intent import detect_intent


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("What is a closure?", "question"),
        ("how do neural networks learn", "question"),
        ("Is recursion the same as iteration", "question"),
        ("Tell me how volcanoes form and why some of them erupt.", "question"),
        ("Explain closures to me", "question"),
        ("I wonder whether this scales", "reflection"),
        ("I think I finally understand pointers.", "reflection"),
        ("Today I realised that types help me.", "reflection"),
        ("I'm reading about photosynthesis.", "statement"),
        ("Hello, I'm learning about AI", "statement"),
        ("Goodbye!", "end_conversation"),
        ("bye for now", "end_conversation"),
        ("That's all for today.", "end_conversation"),
        ("I'm done", "end_conversation"),
        ("stop", "end_conversation"),
        ("I can't stop thinking about graph theory", "statement"),
        ("Stop words are removed before indexing in most search engines", "statement"),
        ("", "statement"),
    ],
)
def test_intent(text: str, intent: str) -> None:
    assert detect_intent(text) == intent
