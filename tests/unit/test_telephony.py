"""Telephony's pieces without a network: the TwiML of every answer (valid XML, only
verbs and attributes Twilio documents), the callers' hash, the URL a signature
covers, and the settings it refuses to start with."""

import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import pytest
from starlette.requests import Request
from starlette.websockets import WebSocket
from twilio.request_validator import RequestValidator

from scripts.twilio_sign import main as sign_main
from services.telephony.calls import call_session, checked_id, utterance_id
from services.telephony.heard import heard_part
from services.telephony.linking import asks_to_link, code_phrase
from services.telephony.privacy import caller_hash
from services.telephony.relay_protocol import (
    EndSession,
    Interrupt,
    Prompt,
    Setup,
    TextToken,
    incoming_adapter,
)
from services.telephony.settings import TelephonySettings, local_mode_warning, refusal
from services.telephony.signatures import public_url
from services.telephony.twiml import GREETING, HOLD, NOT_HEARD, STILL_HOLDING, TwiML

# TwiML verbs and, for each, the attributes Twilio documents that these answers may
# use (https://www.twilio.com/docs/voice/twiml): anything else fails the test.
ALLOWED: dict[str, set[str]] = {
    "Response": set(),
    "Say": {"voice", "language", "loop"},
    "Gather": {
        "input", "language", "enhanced", "speechTimeout", "action", "method", "timeout",
        "actionOnEmptyResult", "hints", "speechModel",
    },
    "Redirect": {"method"},
    "Hangup": set(),
    "Pause": {"length"},
    # https://www.twilio.com/docs/voice/twiml/connect/conversationrelay
    "Connect": {"action", "method"},
    "ConversationRelay": {
        "url", "welcomeGreeting", "welcomeGreetingInterruptible", "interruptible",
        "language", "ttsProvider", "voice", "dtmfDetection",
    },
    # https://www.twilio.com/docs/voice/twiml/recording
    "Start": {"action", "method"},
    "Recording": {
        "recordingStatusCallback", "recordingStatusCallbackMethod",
        "recordingStatusCallbackEvent", "trim", "track", "channels",
    },
}  # fmt: skip
# Which verbs may hold which (Say and Pause nest in Gather, a ConversationRelay in
# Connect, a Recording in Start; nothing else nests).
CHILDREN: dict[str, set[str]] = {
    "Response": {"Say", "Gather", "Redirect", "Hangup", "Pause", "Connect", "Start"},
    "Gather": {"Say", "Pause"},
    "Connect": {"ConversationRelay"},
    "Start": {"Recording"},
}
SESSION = "twilio_CA0123456789abcdef0123456789abcdef"


def settings(**overrides: Any) -> TelephonySettings:
    """Settings from these values alone: every field these tests look at is given, so
    neither the process environment nor a .env file can change the outcome."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "twilio_auth_token": None,
        "phone_hash_secret": None,
        "public_base_url": None,
        "twilio_mode": "gather",
        "reply_timeout": 30.0,
        "reply_deadline": 8.0,
        "voice": "Polly.Joanna-Neural",
        "language": "en-US",
        **overrides,
    }
    return TelephonySettings(_env_file=None, **values)


def checked(xml: str) -> ET.Element:
    """The parsed TwiML, once every element and attribute passed the allow-list."""
    assert xml.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(xml)
    assert root.tag == "Response"

    def walk(element: ET.Element) -> None:
        assert element.tag in ALLOWED, f"<{element.tag}> is not a TwiML verb used here"
        unknown = set(element.attrib) - ALLOWED[element.tag]
        assert not unknown, f"<{element.tag}> has attributes Twilio does not document: {unknown}"
        for child in element:
            assert child.tag in CHILDREN.get(element.tag, set()), (
                f"<{child.tag}> cannot be inside <{element.tag}>"
            )
            walk(child)

    walk(root)
    return root


TWIML = TwiML(settings())
RECORDING = TwiML(settings(twilio_record_calls=True))
ANSWERS: dict[str, Callable[[], str]] = {
    "greeting": lambda: TWIML.greeting(SESSION),
    "greeting, recorded": lambda: RECORDING.greeting(SESSION),
    "greeting again": lambda: RECORDING.greeting(SESSION, silent=1),
    "relay": lambda: TWIML.relay(SESSION, "https://abc.ngrok.app"),
    "relay, recorded": lambda: RECORDING.relay(SESSION, "https://abc.ngrok.app"),
    "hang up": TWIML.hang_up,
    "turn": lambda: TWIML.turn(SESSION, "Photosynthesis turns light into sugar. Why?"),
    "hold": lambda: TWIML.hold(SESSION, "e" * 32, first=True),
    "still holding": lambda: TWIML.hold(SESSION, "e" * 32, first=False),
    "farewell": lambda: TWIML.farewell("Goodbye."),
    "empty": TwiML.empty,
}


@pytest.mark.parametrize("name", list(ANSWERS))
def test_every_answer_is_twiml_twilio_documents(name: str) -> None:
    checked(ANSWERS[name]())


def test_the_greeting_is_v1s() -> None:
    root = checked(TWIML.greeting(SESSION))
    gather, fallback, redirect = list(root)
    assert gather.tag == "Gather"
    assert gather.attrib == {
        "input": "speech",
        "language": "en-US",
        "enhanced": "true",
        "speechTimeout": "auto",
        "action": f"/twilio/process-speech?session_id={SESSION}",
        "method": "POST",
    }
    (say,) = list(gather)
    assert say.attrib == {"voice": "Polly.Joanna-Neural"} and say.text == GREETING
    assert fallback.tag == "Say" and fallback.text == NOT_HEARD
    # Heard nothing: the greeting again, counted, so a line left open ends.
    assert redirect.tag == "Redirect"
    assert redirect.text == f"/twilio/voice?session_id={SESSION}&silent=1"


def test_a_turn_listens_while_it_speaks_and_asks_again_after_silence() -> None:
    text = 'Fractions & ratios: "a/b" <compare>'
    root = checked(TWIML.turn(SESSION, text))
    gather, redirect = list(root)
    assert gather.tag == "Gather" and gather.attrib["input"] == "speech"
    assert [say.text for say in gather] == [text]  # escaped in the XML, whole when parsed
    assert gather.attrib["action"] == f"/twilio/process-speech?session_id={SESSION}"
    assert redirect.text == f"/twilio/process-speech?session_id={SESSION}"


def test_a_reprompt_counts_the_turns_that_heard_nothing() -> None:
    gather, redirect = list(checked(TWIML.turn(SESSION, NOT_HEARD, silent=2)))
    assert gather.attrib["action"] == f"/twilio/process-speech?session_id={SESSION}&silent=2"
    assert redirect.text == f"/twilio/process-speech?session_id={SESSION}&silent=2"


def test_recording_starts_with_the_call_only() -> None:
    start = checked(RECORDING.greeting(SESSION))[0]
    assert start.tag == "Start"
    (recording,) = list(start)
    assert recording.attrib["recordingStatusCallback"] == (
        f"/twilio/recording?session_id={SESSION}"
    )
    assert recording.attrib["recordingStatusCallbackEvent"] == "completed"
    # Greeted again after silence: the recording runs already.
    assert checked(RECORDING.greeting(SESSION, silent=1))[0].tag == "Gather"
    assert checked(TWIML.greeting(SESSION))[0].tag == "Gather"


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("https://abc.ngrok.app", "wss://abc.ngrok.app/twilio/relay"),
        ("https://example.test/voice-agent/", "wss://example.test/voice-agent/twilio/relay"),
        ("http://127.0.0.1:8001/", "ws://127.0.0.1:8001/twilio/relay"),
    ],
)
def test_relay_mode_connects_the_call_to_the_websocket(base: str, url: str) -> None:
    (connect,) = list(checked(TWIML.relay(SESSION, base)))
    assert connect.tag == "Connect"
    assert connect.attrib == {
        "action": f"/twilio/relay-ended?session_id={SESSION}",
        "method": "POST",
    }
    (relay,) = list(connect)
    assert relay.attrib == {
        "url": f"{url}?session_id={SESSION}",
        "welcomeGreeting": GREETING,
        "welcomeGreetingInterruptible": "any",
        "interruptible": "any",
        "language": "en-US",
        "dtmfDetection": "true",
    }


def test_a_relay_voice_is_the_operators_choice() -> None:
    twiml = TwiML(settings(relay_voice="en-US-Journey-O", relay_tts_provider="Google"))
    relay = checked(twiml.relay(SESSION, "https://abc.ngrok.app"))[0][0]
    assert relay.attrib["voice"] == "en-US-Journey-O"
    assert relay.attrib["ttsProvider"] == "Google"


@pytest.mark.parametrize(("first", "phrase"), [(True, HOLD), (False, STILL_HOLDING)])
def test_a_hold_says_a_phrase_and_redirects_to_the_reply(first: bool, phrase: str) -> None:
    say, redirect = list(checked(TWIML.hold(SESSION, "abc123", first=first)))
    assert say.text == phrase
    assert redirect.attrib == {"method": "POST"}
    assert redirect.text == f"/twilio/reply?session_id={SESSION}&event_id=abc123"


def test_links_carry_the_path_of_the_public_url() -> None:
    twiml = TwiML(settings(public_base_url="https://example.test/voice-agent/"))
    gather = checked(twiml.greeting(SESSION))[0]
    assert gather.attrib["action"] == f"/voice-agent/twilio/process-speech?session_id={SESSION}"


def test_the_callers_hash_is_stable_keyed_and_not_the_number() -> None:
    number = "+15551234567"
    value = caller_hash(number, "secret-a")
    assert value is not None and len(value) == 16
    assert int(value, 16) >= 0  # hex digits
    assert caller_hash(number, "secret-a") == value
    assert caller_hash(number, "secret-b") != value
    assert caller_hash("+15557654321", "secret-a") != value
    assert "5551234567" not in value
    assert caller_hash(None, "secret-a") is None and caller_hash("", "secret-a") is None


def request_for(path: str, query: str, host: str = "127.0.0.1:8001") -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [(b"host", host.encode())],
        "server": ("127.0.0.1", 8001),
    }
    return Request(scope)


def test_a_signature_covers_the_public_url_with_path_and_query() -> None:
    request = request_for("/twilio/reply", f"session_id={SESSION}&event_id=e1")
    url = public_url(request, "https://abc.ngrok.app/")
    assert url == f"https://abc.ngrok.app/twilio/reply?session_id={SESSION}&event_id=e1"
    # Unset: the request's own URL, as this service sees it.
    assert public_url(request, None).startswith("http://127.0.0.1:8001/twilio/reply?")


def test_the_relay_handshake_is_signed_for_the_wss_url() -> None:
    scope = {
        "type": "websocket",
        "scheme": "ws",
        "path": "/twilio/relay",
        "raw_path": b"/twilio/relay",
        "query_string": f"session_id={SESSION}".encode(),
        "headers": [(b"host", b"127.0.0.1:8001")],
        "server": ("127.0.0.1", 8001),
    }
    websocket = WebSocket(scope, receive=_never, send=_never)
    expected = f"wss://abc.ngrok.app/twilio/relay?session_id={SESSION}"
    assert public_url(websocket, "https://abc.ngrok.app") == expected
    assert public_url(websocket, "http://abc.ngrok.app").startswith("ws://abc.ngrok.app/")
    assert public_url(websocket, None).startswith("ws://127.0.0.1:8001/twilio/relay?")


async def _never(*_: Any) -> Any:
    raise AssertionError("not used")


def test_the_sign_script_prints_the_sdks_signature(capsys: pytest.CaptureFixture[str]) -> None:
    url = "https://abc.ngrok.app/twilio/voice"
    sign_main(["--token", "tok", url, "CallSid=CA1", "From=+15551234567", "Empty="])
    expected = RequestValidator("tok").compute_signature(
        url, {"CallSid": "CA1", "From": "+15551234567", "Empty": ""}
    )
    assert capsys.readouterr().out == f"{expected}\n"


def test_sessions_come_from_the_url_or_the_call_sid() -> None:
    assert call_session(None, "CA1") == "twilio_CA1"
    assert call_session("twilio_CA2", "CA1") == "twilio_CA2"
    assert call_session(None, None) is None
    assert call_session("bad id!", "CA1") is None
    assert checked_id("x" * 65) is None and checked_id("e1") == "e1"


def test_a_retried_webhook_names_the_same_utterance() -> None:
    assert utterance_id(SESSION, "hi", "tok") == utterance_id(SESSION, "hi", "tok")
    assert utterance_id(SESSION, "hi", "tok") != utterance_id(SESSION, "hello", "tok")
    assert utterance_id(SESSION, "hi", None) != utterance_id(SESSION, "hi", None)


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"max_reprompts": 0}, "MAX_REPROMPTS"),
        ({"host": "0.0.0.0"}, "TWILIO_AUTH_TOKEN"),
        ({"host": "10.0.0.5"}, "HOST=127.0.0.1"),
        ({"twilio_auth_token": "t", "host": "0.0.0.0"}, "PHONE_HASH_SECRET"),
        ({"public_base_url": "abc.ngrok.app"}, "PUBLIC_BASE_URL"),
        ({"reply_deadline": 40.0}, "REPLY_DEADLINE"),
    ],
)
def test_settings_it_refuses_to_start_with(values: dict[str, Any], reason: str) -> None:
    problem = refusal(settings(**values))
    assert problem is not None and reason in problem


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_local_mode_is_loopback_only_and_says_so(host: str) -> None:
    local = settings(host=host)
    assert refusal(local) is None
    warning = local_mode_warning(local)
    assert warning is not None and "NOT checked" in warning


def test_with_a_token_and_a_secret_it_starts_anywhere_without_a_warning() -> None:
    production = settings(twilio_auth_token="t", phone_hash_secret="s", host="0.0.0.0")
    assert refusal(production) is None and local_mode_warning(production) is None


@pytest.mark.parametrize(
    ("written", "spoken", "heard"),
    [
        # Twilio's words as it spoke them: case and punctuation may differ.
        ("Tides rise twice a day. The moon", "tides rise twice", "Tides rise twice"),
        ("Tides rise twice a day. The moon", "Tides rise twice a day", "Tides rise twice a day."),
        ("It\u2019s the moon, mostly.", "it's the moon", "It\u2019s the moon,"),
        # A word cut mid-way counts as heard whole.
        ("Life is a complex set of things", "Life is a compl", "Life is a complex"),
        ("All of it was heard.", "All of it was heard", "All of it was heard."),
        # Words the reply does not have (digits read out): Twilio's own words.
        ("It costs 5 dollars", "it costs five dollars", "it costs five dollars"),
        ("Anything", "", ""),
        ("", "something   said", "something said"),
    ],
)  # fmt: skip
def test_what_was_heard_is_the_reply_cut_after_the_last_word_spoken(
    written: str, spoken: str, heard: str
) -> None:
    assert heard_part(written, spoken) == heard


def test_relay_messages_read_as_twilio_writes_them() -> None:
    setup = incoming_adapter.validate_json(
        '{"type": "setup", "sessionId": "VX1", "callSid": "CA1", "from": "+15551234567",'
        ' "to": "+15550000000", "customParameters": {"a": "b"}, "newField": 1}'
    )
    assert isinstance(setup, Setup) and setup.call_sid == "CA1" and setup.from_ == "+15551234567"
    interrupt = incoming_adapter.validate_json(
        '{"type": "interrupt", "utteranceUntilInterrupt": "Life is",'
        ' "durationUntilInterruptMs": "460"}'
    )
    assert isinstance(interrupt, Interrupt) and interrupt.duration_until_interrupt_ms == 460
    prompt = incoming_adapter.validate_json(
        '{"type": "prompt", "voicePrompt": "Hi", "lang": "en-US"}'
    )
    assert isinstance(prompt, Prompt) and prompt.last and prompt.voice_prompt == "Hi"
    assert TextToken(token="Hi", last=False).model_dump(by_alias=True) == {
        "type": "text",
        "token": "Hi",
        "last": False,
    }
    assert EndSession(handoff_data="{}").model_dump(by_alias=True) == {
        "type": "end",
        "handoffData": "{}",
    }


@pytest.mark.parametrize(
    "speech",
    ["Link my phone.", "could you please link this number", "Pair my phone", "CONNECT MY CALL"],
)
def test_asking_to_link_is_heard_however_it_is_put(speech: str) -> None:
    assert asks_to_link(speech)


@pytest.mark.parametrize(
    "speech", ["I'm learning about phone links", "my phone is old", "the missing link"]
)
def test_talking_about_phones_is_not_asking_to_link(speech: str) -> None:
    assert not asks_to_link(speech)


def test_the_code_is_spoken_digit_by_digit_twice_with_its_life() -> None:
    phrase = code_phrase("040718", 600)
    assert phrase.count("0, 4, 0, 7, 1, 8") == 2
    assert "within 10 minutes" in phrase
