import pytest

from services.gateway import validation
from services.gateway.validation import InputError


def test_text_is_stripped() -> None:
    assert validation.utterance("  hi  ", 10) == "hi"


@pytest.mark.parametrize(("text", "code"), [("", "empty_text"), ("   \n", "empty_text"),
                                             ("x" * 11, "text_too_long")])  # fmt: skip
def test_bad_text(text: str, code: str) -> None:
    with pytest.raises(InputError) as caught:
        validation.utterance(text, 10)
    assert caught.value.code == code
    assert caught.value.status == 400


@pytest.mark.parametrize("value", [0, -1, 101])
def test_limits_out_of_range(value: int) -> None:
    with pytest.raises(InputError, match="between 1 and 100"):
        validation.limit(value, 100)


@pytest.mark.parametrize("good", ["a", "A-b_9", "x" * 64, "twilio_CA0123456789abcdef"])
def test_good_session_ids(good: str) -> None:
    assert validation.session_id(good) == good


@pytest.mark.parametrize("bad", ["", "x" * 65, "a b", "a/b", "é", "a.b"])
def test_bad_session_ids(bad: str) -> None:
    with pytest.raises(InputError):
        validation.session_id(bad)


def test_audio_base64_decodes_plain_and_data_urls() -> None:
    assert validation.audio_base64("UklGRg==", 100) == b"RIFF"
    assert validation.audio_base64("data:audio/webm;base64,UklG\nRg==", 100) == b"RIFF"


@pytest.mark.parametrize(
    ("encoded", "code", "status"),
    [
        ("", "invalid_audio", 400),
        ("   ", "invalid_audio", 400),
        ("not base64!", "invalid_audio", 400),
        ("UklGR", "invalid_audio", 400),
        ("A" * 200, "audio_too_large", 413),
    ],
)
def test_bad_audio_base64(encoded: str, code: str, status: int) -> None:
    with pytest.raises(InputError) as caught:
        validation.audio_base64(encoded, 100)
    assert (caught.value.code, caught.value.status) == (code, status)
