"""Telephony in Gather mode on real processes: Twilio's webhooks signed with the
SDK's own signature computation, a whole call through the responder into the
archive with the caller's number nowhere in clear, the slow reply reached through
holding phrases and redirects (on either instance), and what is never asked.

The model is the OpenAI wire server repeating what it is told (`echo`).
"""

import asyncio
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from redis.asyncio import Redis
from twilio.request_validator import RequestValidator

from services.telephony.privacy import caller_hash
from services.telephony.twiml import APOLOGY, GREETING, HOLD, NOT_HEARD, SILENT_FAREWELL
from shared.streams import UTTERANCE_RECEIVED, Keys
from tests.support.redis_server import local_redis
from tests.support.services import ROOT, ServiceProcess, running, start_service
from tests.support.stack import archived, base_env, eventually, everything_in_redis
from tests.wire.openai_server import OpenAIWireServer

TOKEN = "test-auth-token-0123456789abcdef"
SECRET = "test-phone-hash-secret"
# The secret of a Twilio Webhooks rule that signs with HMAC-SHA256 instead.
SHARED_KEY = "test-webhooks-shared-key"
SIGNING_SETTINGS = {
    "X-Twilio-Webhooks-Signature-Settings": "key=webhooks_sharedkey_test,algorithm=HMAC_SHA256"
}
PUBLIC = "https://voice.example.test"
NUMBER = "+15551234567"
# The number as it may be written anywhere: E.164, without the +, national.
NUMBER_FORMS = (NUMBER, NUMBER[1:], NUMBER[2:])
# The slow instance puts a caller on hold after this long.
SLOW_DEADLINE_S = 1
# Long enough a wait that a second request to the model, had one been made, would be seen.
QUIET_S = 1.0


@dataclass
class Stack:
    telephony: ServiceProcess
    # Another instance, holding callers after SLOW_DEADLINE_S.
    slow: ServiceProcess
    services: list[ServiceProcess]
    db: Path
    env: dict[str, str]
    tmp: Path


@pytest.fixture(scope="module")
def stack(llm: OpenAIWireServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("telephony")
    with local_redis() as server:
        env = {
            **base_env(server.url, llm, tmp / "archive.db"),
            "REPLY_TIMEOUT": "20",
            "TWILIO_AUTH_TOKEN": TOKEN,
            "PHONE_HASH_SECRET": SECRET,
            "PUBLIC_BASE_URL": PUBLIC,
            "TWILIO_WEBHOOK_SHARED_KEY": SHARED_KEY,
        }
        with running(["archiver", "responder", "telephony"], env, tmp) as services:
            slow_env = {**env, "REPLY_DEADLINE": str(SLOW_DEADLINE_S)}
            slow = start_service("telephony", slow_env, tmp, label="telephony-slow")
            try:
                yield Stack(
                    services["telephony"],
                    slow,
                    [*services.values(), slow],
                    tmp / "archive.db",
                    env,
                    tmp,
                )
            finally:
                slow.stop()


@pytest.fixture
async def keys(stack: Stack) -> AsyncIterator[Redis]:
    client: Redis = Redis.from_url(stack.env["REDIS_URL"])
    yield client
    await client.aclose()


def sign(url: str, params: Mapping[str, str], token: str = TOKEN) -> str:
    return str(RequestValidator(token).compute_signature(url, dict(params)))


async def webhook(
    service: ServiceProcess,
    path: str,
    params: Mapping[str, str],
    *,
    signature: str | None = "",
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    """POST the form as Twilio does: signed for PUBLIC + path (by default), with
    the `signature` given, or with none (None)."""
    sent = dict(headers or {})
    if signature is not None:
        sent["X-Twilio-Signature"] = signature or sign(PUBLIC + path, params)
    async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as client:
        return await client.post(path, data=dict(params), headers=sent)


def twiml(response: httpx.Response) -> ET.Element:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    return ET.fromstring(response.text)


def said(root: ET.Element) -> list[str]:
    """Every <Say>'s text, in order, nested ones included."""
    return [say.text or "" for say in root.iter("Say")]


def is_reply(root: ET.Element, text: str) -> bool:
    """Whether `root` says the echoed reply to `text` (the companion may add a
    question after it), listening for the next words."""
    phrases = said(root)
    return (
        len(phrases) == 1
        and phrases[0].startswith(f"You said: {text}")
        and root.find("Gather/Say") is not None
    )


def redirect_of(root: ET.Element) -> str:
    (redirect,) = root.iter("Redirect")
    return redirect.text or ""


def call(sid: str, **params: str) -> dict[str, str]:
    """Twilio's parameters of a request about call `sid`, with `params`."""
    twilio = {"CallSid": sid, "AccountSid": "AC" + "0" * 32, "From": NUMBER, "To": "+15550000000"}
    return twilio | params


def speech_path(session: str) -> str:
    return "/twilio/process-speech?" + urlencode({"session_id": session})


def chat_requests(llm: OpenAIWireServer, text: str | None = None) -> int:
    """Chat requests the model got (whose last message is `text`, if given)."""
    return sum(
        1
        for r in list(llm.requests)
        if r.path.endswith("/chat/completions")
        and (text is None or r.body["messages"][-1]["content"] == text)
    )


async def settles(probe: Callable[[], Awaitable[int]], expected: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while (value := await probe()) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"still {value}, not {expected}")
        await asyncio.sleep(0.1)


async def test_signed_webhooks_pass_and_forged_ones_get_403_and_publish_nothing(
    stack: Stack, echo: OpenAIWireServer, keys: Redis
) -> None:
    sid = "CAsig"
    session = f"twilio_{sid}"
    assert GREETING in said(twiml(await webhook(stack.telephony, "/twilio/voice", call(sid))))

    path = speech_path(session)
    params = call(sid, SpeechResult="Tell me about tides", Confidence="0.9")
    published = await keys.xlen(UTTERANCE_RECEIVED)
    telephony = stack.telephony
    signed = sign(PUBLIC + path, params)
    reply_path = f"/twilio/reply?session_id={session}&event_id=e1"
    forged = {
        "a tampered parameter": webhook(
            telephony, path, {**params, "SpeechResult": "Something else"}, signature=signed
        ),
        "an added parameter": webhook(telephony, path, {**params, "Extra": "1"}, signature=signed),
        "http for https": webhook(
            telephony, path, params, signature=sign("http://voice.example.test" + path, params)
        ),
        "the URL the service sees": webhook(
            telephony, path, params, signature=sign(telephony.base_url + path, params)
        ),
        "another query": webhook(
            telephony, path, params, signature=sign(PUBLIC + speech_path("twilio_CAx"), params)
        ),
        "another token": webhook(
            telephony, path, params, signature=sign(PUBLIC + path, params, "another-token")
        ),
        "no signature": webhook(telephony, path, params, signature=None),
        "an unsigned greeting": webhook(telephony, "/twilio/voice", call(sid), signature=None),
        "an unsigned status": webhook(
            telephony, "/twilio/status", call(sid, CallStatus="completed"), signature=None
        ),
        "an unsigned pick-up": webhook(telephony, reply_path, call(sid), signature=None),
    }
    answers = dict(zip(forged, await asyncio.gather(*forged.values()), strict=True))
    for what, response in answers.items():
        assert response.status_code == 403, what
        assert response.headers["content-type"].startswith("text/plain"), what
        assert "X-Twilio-Signature" in response.text, what
    await asyncio.sleep(QUIET_S)
    assert await keys.xlen(UTTERANCE_RECEIVED) == published
    assert chat_requests(echo) == 0
    # Not ended either: the forged status published nothing.
    assert "call twilio_CAsig is over" not in telephony.logs()

    # The genuine request, after all that, is answered.
    answered = twiml(await webhook(telephony, path, params))
    assert is_reply(answered, "Tell me about tides"), said(answered)
    assert await keys.xlen(UTTERANCE_RECEIVED) == published + 1


async def test_webhooks_signed_with_a_shared_key_and_sha256_pass_and_others_do_not(
    stack: Stack, keys: Redis
) -> None:
    params = call("CAshared")
    url = PUBLIC + "/twilio/voice"
    sha256 = str(RequestValidator(SHARED_KEY).compute_signature(url, params, "HMAC_SHA256"))
    ok = await webhook(
        stack.telephony, "/twilio/voice", params, signature=sha256, headers=SIGNING_SETTINGS
    )
    assert GREETING in said(twiml(ok))
    forged = {
        # The Auth Token's SHA-1 signature, sent as if a rule had signed it.
        "the token's SHA-1 under a rule": webhook(
            stack.telephony, "/twilio/voice", params, headers=SIGNING_SETTINGS
        ),
        # The rule's signature without the header that says so.
        "SHA-256 without the settings header": webhook(
            stack.telephony, "/twilio/voice", params, signature=sha256
        ),
        "an algorithm nobody knows": webhook(
            stack.telephony,
            "/twilio/voice",
            params,
            signature=sha256,
            headers={"X-Twilio-Webhooks-Signature-Settings": "key=k,algorithm=HMAC_MD5"},
        ),
    }
    for what, response in zip(forged, await asyncio.gather(*forged.values()), strict=True):
        assert response.status_code == 403, what


async def test_a_whole_call_is_archived_and_the_number_is_nowhere(
    stack: Stack, echo: OpenAIWireServer, keys: Redis
) -> None:
    sid = "CAcall"
    session = f"twilio_{sid}"
    greeting = twiml(
        await webhook(stack.telephony, "/twilio/voice", call(sid, CallStatus="ringing"))
    )
    assert said(greeting)[0] == GREETING
    gather = greeting.find("Gather")
    assert gather is not None and gather.attrib["action"] == speech_path(session)

    text = "I am learning how volcanoes form"
    spoken = call(sid, SpeechResult=text, Confidence="0.9")
    answer = twiml(await webhook(stack.telephony, gather.attrib["action"], spoken))
    # Said while listening for the next words; silence comes back to ask again.
    assert is_reply(answer, text), said(answer)
    assert redirect_of(answer) == speech_path(session)
    assert chat_requests(echo, text) == 1

    ended = await webhook(stack.telephony, "/twilio/status", call(sid, CallStatus="completed"))
    assert ended.status_code == 200 and len(ET.fromstring(ended.text)) == 0
    # Ended as the WebSocket's `end` does: the context is gone.
    await settles(lambda: keys.exists(Keys.context(session)), 0)
    await eventually(lambda: any(s == session for s, _, _ in archived(stack.db)))
    rows = [(user_text, meta) for s, user_text, meta in archived(stack.db) if s == session]
    assert len(rows) == 1
    ((user_text, metadata),) = rows
    assert user_text == text
    assert metadata["source"] == "twilio"
    assert metadata["caller"] == caller_hash(NUMBER, SECRET)

    # The archive's files (WAL too), every Redis key and value, every service's log.
    places = {p.name: p.read_bytes() for p in stack.tmp.glob("archive.db*")}
    places["redis"] = everything_in_redis(stack.env["REDIS_URL"])
    places |= {s.log_path.name: s.log_path.read_bytes() for s in stack.services}
    # The search would find what is there: the session, in the archive and Redis.
    assert session.encode() in places["archive.db"] + places.get("archive.db-wal", b"")
    assert session.encode() in places["redis"]
    for where, blob in places.items():
        for number in NUMBER_FORMS:
            assert number.encode() not in blob, f"{number} is in {where}"


async def follow(stack: Stack, root: ET.Element, sid: str) -> tuple[list[str], ET.Element]:
    """Follow a caller on hold through the redirects, taking turns between the two
    instances as a load balancer might, to the answer that is not a hold; the
    phrases heard on the way."""
    heard: list[str] = []
    instances = [stack.slow, stack.telephony]
    for hop in range(20):
        phrases = said(root)
        if root.find("Gather") is not None:
            return heard, root
        heard += phrases
        root = twiml(await webhook(instances[hop % 2], redirect_of(root), call(sid)))
    raise AssertionError(f"still on hold after 20 redirects: {heard}")


async def test_a_slow_reply_is_reached_through_holds_and_asked_once(
    stack: Stack, echo: OpenAIWireServer
) -> None:
    echo.delay = SLOW_DEADLINE_S * 3.5  # holds on the slow instance, then the other one
    sid = "CAslow"
    session = f"twilio_{sid}"
    text = "Why does the moon have phases"
    began = time.monotonic()
    spoken = call(sid, SpeechResult=text, Confidence="0.8")
    first = twiml(await webhook(stack.slow, speech_path(session), spoken))
    assert time.monotonic() - began < SLOW_DEADLINE_S + 1.5
    assert said(first) == [HOLD]
    (redirect,) = first.iter("Redirect")
    assert redirect.attrib == {"method": "POST"}
    assert redirect.text is not None and redirect.text.startswith("/twilio/reply?session_id=")

    heard, answer = await follow(stack, first, sid)
    assert heard[0] == HOLD and len(heard) >= 2
    assert is_reply(answer, text), said(answer)
    await asyncio.sleep(QUIET_S)
    assert chat_requests(echo, text) == 1
    await eventually(lambda: any(s == session for s, _, _ in archived(stack.db)))
    assert [u for s, u, _ in archived(stack.db) if s == session] == [text]

    # Followed once more (a webhook Twilio sent again), the same reply, asked no more.
    again = twiml(await webhook(stack.telephony, redirect_of(first), call(sid)))
    assert is_reply(again, text) and said(again) == said(answer)
    assert chat_requests(echo, text) == 1


async def test_a_caller_on_hold_gets_the_reply_after_the_instance_that_asked_died(
    stack: Stack, echo: OpenAIWireServer
) -> None:
    """Its reply went to the dead instance's reply stream: the instance that Twilio's
    redirect reaches takes it from what the responder kept of the answer."""
    echo.delay = SLOW_DEADLINE_S * 2.5
    sid = "CAorphan"
    session = f"twilio_{sid}"
    text = "Where do rivers begin"
    doomed = start_service(
        "telephony",
        {**stack.env, "REPLY_DEADLINE": str(SLOW_DEADLINE_S)},
        stack.tmp,
        label="telephony-doomed",
    )
    try:
        spoken = call(sid, SpeechResult=text, Confidence="0.8")
        first = twiml(await webhook(doomed, speech_path(session), spoken))
        assert said(first) == [HOLD]
    finally:
        doomed.kill()
    root = first
    for _ in range(20):
        if root.find("Gather") is not None:
            break
        root = twiml(await webhook(stack.telephony, redirect_of(root), call(sid)))
    assert is_reply(root, text), said(root)
    assert chat_requests(echo, text) == 1


async def test_a_retried_webhook_gets_the_same_reply_and_asks_once(
    stack: Stack, echo: OpenAIWireServer
) -> None:
    echo.delay = 0.2
    sid = "CAretry"
    text = "Explain compound interest to me"
    spoken = call(sid, SpeechResult=text, Confidence="0.95")
    retried = {"I-Twilio-Idempotency-Token": "idem-1234"}
    path = speech_path(f"twilio_{sid}")
    answers = await asyncio.gather(
        webhook(stack.telephony, path, spoken, headers=retried),
        webhook(stack.slow, path, spoken, headers=retried),
    )
    first, second = (twiml(a) for a in answers)
    assert is_reply(first, text) and said(first) == said(second)
    await asyncio.sleep(QUIET_S)
    assert chat_requests(echo, text) == 1


@pytest.mark.parametrize(
    "speech", [{"SpeechResult": "mumble", "Confidence": "0.12"}, {"SpeechResult": "  "}, {}]
)
async def test_unclear_speech_is_asked_again_without_the_model(
    stack: Stack, echo: OpenAIWireServer, keys: Redis, speech: dict[str, str]
) -> None:
    published = await keys.xlen(UTTERANCE_RECEIVED)
    path = speech_path("twilio_CAunclear")
    answer = twiml(await webhook(stack.telephony, path, call("CAunclear", **speech)))
    assert said(answer) == [NOT_HEARD]
    assert answer.find("Gather") is not None and redirect_of(answer) == path + "&silent=1"
    assert await keys.xlen(UTTERANCE_RECEIVED) == published
    assert chat_requests(echo) == 0


async def test_a_silent_line_is_hung_up_after_max_reprompts(
    stack: Stack, echo: OpenAIWireServer
) -> None:
    """Nothing heard, MAX_REPROMPTS (3) times in a row: the call ends politely,
    whether the silence follows the greeting or a reply."""
    sid = "CAsilent"
    root = twiml(await webhook(stack.telephony, "/twilio/voice", call(sid)))
    for _ in range(3):
        assert root.find("Gather") is not None and root.find("Hangup") is None
        root = twiml(await webhook(stack.telephony, redirect_of(root), call(sid)))
    assert said(root) == [SILENT_FAREWELL] and root.find("Hangup") is not None

    path = speech_path(f"twilio_{sid}")
    root = twiml(await webhook(stack.telephony, path, call(sid, SpeechResult="Hello there")))
    for _ in range(3):
        assert root.find("Hangup") is None
        root = twiml(await webhook(stack.telephony, redirect_of(root), call(sid)))
    assert said(root) == [SILENT_FAREWELL] and root.find("Hangup") is not None
    assert chat_requests(echo) == 1


async def test_a_reply_nobody_awaits_is_an_apology_not_an_error(
    stack: Stack, echo: OpenAIWireServer
) -> None:
    path = "/twilio/reply?session_id=twilio_CAgone&event_id=never-asked"
    answer = twiml(await webhook(stack.telephony, path, call("CAgone")))
    assert said(answer) == [APOLOGY] and answer.find("Gather") is not None


def test_without_a_token_it_will_not_listen_beyond_loopback(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if k != "TWILIO_AUTH_TOKEN"},
        "HOST": "0.0.0.0",
        "REDIS_URL": "redis://127.0.0.1:1",  # never reached: it stops before connecting
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.telephony"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "TWILIO_AUTH_TOKEN" in done.stderr and "HOST=127.0.0.1" in done.stderr
