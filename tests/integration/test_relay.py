"""Telephony in ConversationRelay mode on real processes: a client that speaks
Twilio's relay protocol over a WebSocket whose handshake is signed with the SDK's
own signature computation, against the responder (openai SDK -> wire server) and
the archiver on a real Redis.

A whole call (the reply streamed as `text` tokens ending with `last`, the call's
exchange archived and the number nowhere), a caller talking over the reply (the
tokens stop, the model's stream is cut, the archive keeps what was heard), a
goodbye (the summary spoken, then `end`), a silent line, a recording, and the
handshakes that are refused.
"""

import asyncio
import json
import sqlite3
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode

import httpx
import pytest
import websockets
from redis.asyncio import Redis
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection

from services.telephony.linking import OPEN_MODE
from services.telephony.privacy import caller_hash
from services.telephony.relay import GOODBYE
from services.telephony.twiml import APOLOGY, GREETING, NOT_HEARD
from shared.streams import SESSION_END_REQUESTED, UTTERANCE_RECEIVED, Keys
from tests.support.redis_server import local_redis
from tests.support.services import ServiceProcess, running
from tests.support.stack import base_env, eventually, everything_in_redis
from tests.wire.openai_server import OpenAIWireServer

TOKEN = "test-auth-token-0123456789abcdef"
SECRET = "test-phone-hash-secret"
PUBLIC = "https://voice.example.test"
NUMBER = "+15557654321"
NUMBER_FORMS = (NUMBER, NUMBER[1:], NUMBER[2:])
# Long enough that a token sent after the cut, had there been one, would be seen.
QUIET_S = 1.0


@dataclass
class Stack:
    telephony: ServiceProcess
    services: list[ServiceProcess]
    db: Path
    env: dict[str, str]
    tmp: Path


@pytest.fixture(scope="module")
def stack(llm: OpenAIWireServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("relay")
    with local_redis() as server:
        env = {
            **base_env(server.url, llm, tmp / "archive.db"),
            "REPLY_TIMEOUT": "20",
            "TWILIO_MODE": "relay",
            "TWILIO_AUTH_TOKEN": TOKEN,
            "PHONE_HASH_SECRET": SECRET,
            "PUBLIC_BASE_URL": PUBLIC,
            "TWILIO_RECORD_CALLS": "true",
            "RELAY_GOODBYE_WAIT_MAX": "0.5",
        }
        with running(["archiver", "responder", "telephony"], env, tmp) as services:
            yield Stack(
                services["telephony"], list(services.values()), tmp / "archive.db", env, tmp
            )


@pytest.fixture
async def keys(stack: Stack) -> AsyncIterator[Redis]:
    client: Redis = Redis.from_url(stack.env["REDIS_URL"])
    yield client
    await client.aclose()


def relay_path(session: str) -> str:
    return "/twilio/relay?" + urlencode({"session_id": session})


def signed_for(path: str, params: Mapping[str, str] | None = None, token: str = TOKEN) -> str:
    url = ("wss://voice.example.test" if path.startswith("/twilio/relay?") else PUBLIC) + path
    return str(RequestValidator(token).compute_signature(url, dict(params or {})))


def call(sid: str, **params: str) -> dict[str, str]:
    twilio = {"CallSid": sid, "AccountSid": "AC" + "0" * 32, "From": NUMBER, "To": "+15550000000"}
    return twilio | params


async def webhook(service: ServiceProcess, path: str, params: Mapping[str, str]) -> httpx.Response:
    headers = {"X-Twilio-Signature": signed_for(path, params)}
    async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as client:
        return await client.post(path, data=dict(params), headers=headers)


def twiml(response: httpx.Response) -> ET.Element:
    assert response.status_code == 200, response.text
    return ET.fromstring(response.text)


@asynccontextmanager
async def relay(
    stack: Stack, sid: str, *, signature: str | None = "", path: str | None = None
) -> AsyncIterator[ClientConnection]:
    """A relay WebSocket as Twilio opens it for call `sid`, after `setup`."""
    path = path or relay_path(f"twilio_{sid}")
    headers = {} if signature is None else {"X-Twilio-Signature": signature or signed_for(path)}
    url = stack.telephony.base_url.replace("http://", "ws://") + path
    async with websockets.connect(url, additional_headers=headers) as ws:
        setup = {
            "type": "setup",
            "sessionId": "VX" + "1" * 32,
            "callSid": sid,
            "from": NUMBER,
            "to": "+15550000000",
            "direction": "inbound",
            "callStatus": "RINGING",
            "customParameters": {},
        }
        await ws.send(json.dumps(setup))
        yield ws


async def next_message(ws: ClientConnection, timeout: float = 20) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return message


async def spoken_reply(ws: ClientConnection) -> tuple[list[str], float]:
    """The tokens of one reply up to the one with `last`, and when the first came."""
    tokens: list[str] = []
    first = 0.0
    while True:
        message = await next_message(ws)
        assert message["type"] == "text", message
        assert set(message) == {"type", "token", "last"}
        if not tokens:
            first = time.monotonic()
        tokens.append(message["token"])
        if message["last"]:
            return tokens, first


def prompt(text: str) -> str:
    return json.dumps({"type": "prompt", "voicePrompt": text, "lang": "en-US", "last": True})


def captures(db: Path, session: str) -> list[tuple[str, str, dict[str, Any]]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT user_text, agent_text, metadata FROM captures WHERE session_id = ? ORDER BY id",
            (session,),
        ).fetchall()
    return [(u, a, json.loads(m)) for u, a, m in rows]


async def test_a_call_connects_to_the_relay_and_starts_recording(stack: Stack) -> None:
    root = twiml(await webhook(stack.telephony, "/twilio/voice", call("CAtwiml")))
    start, connect = list(root)
    assert start.tag == "Start" and start[0].tag == "Recording"
    (relay_verb,) = list(connect)
    assert relay_verb.tag == "ConversationRelay"
    assert relay_verb.attrib["url"] == "wss://voice.example.test" + relay_path("twilio_CAtwiml")
    assert relay_verb.attrib["welcomeGreeting"] == GREETING
    assert relay_verb.attrib["interruptible"] == "any"


async def test_a_whole_relay_call_streams_the_reply_and_archives_it(
    stack: Stack, echo: OpenAIWireServer, keys: Redis
) -> None:
    echo.piece_delay = 0.15
    sid = "CArelay"
    session = f"twilio_{sid}"
    text = "I am learning how rivers carve their valleys over time"
    async with relay(stack, sid) as ws:
        await ws.send(prompt(text))
        tokens, first = await spoken_reply(ws)
        last = time.monotonic()
        reply = "".join(tokens)
        assert reply.startswith(f"You said: {text}")
        # Spoken as written: the first words long before the last.
        assert len(tokens) >= 3 and last - first > 0.3
    # The relay closed (the caller hung up): the session is ended, the context gone.
    await eventually(lambda: len(captures(stack.db, session)) == 1)
    ((user_text, agent_text, metadata),) = captures(stack.db, session)
    assert (user_text, agent_text) == (text, reply)
    assert metadata["source"] == "twilio" and metadata["caller"] == caller_hash(NUMBER, SECRET)
    deadline = time.monotonic() + 20
    while await keys.exists(Keys.context(session)):
        assert time.monotonic() < deadline, "the session was not ended"
        await asyncio.sleep(0.1)

    # The recording Twilio made of the call is kept with its exchanges.
    recording = call(
        sid,
        RecordingSid="RE" + "a" * 32,
        RecordingUrl="https://api.twilio.com/2010-04-01/Accounts/AC0/Recordings/REa",
        RecordingStatus="completed",
        RecordingDuration="42",
    )
    answer = await webhook(stack.telephony, f"/twilio/recording?session_id={session}", recording)
    assert answer.status_code == 200
    await eventually(lambda: "recordings" in captures(stack.db, session)[0][2])
    (kept,) = captures(stack.db, session)[0][2]["recordings"]
    assert kept == {
        "sid": recording["RecordingSid"],
        "url": recording["RecordingUrl"],
        "duration_s": 42,
    }

    places = {p.name: p.read_bytes() for p in stack.tmp.glob("archive.db*")}
    places["redis"] = everything_in_redis(stack.env["REDIS_URL"])
    places |= {s.log_path.name: s.log_path.read_bytes() for s in stack.services}
    for where, blob in places.items():
        for number in NUMBER_FORMS:
            assert number.encode() not in blob, f"{number} is in {where}"


async def test_talking_over_the_reply_stops_it_and_the_archive_keeps_what_was_heard(
    stack: Stack, echo: OpenAIWireServer
) -> None:
    echo.piece_delay = 0.3
    sid = "CAbarge"
    session = f"twilio_{sid}"
    text = "tell me everything about the water cycle from the clouds to the sea and back"
    async with relay(stack, sid) as ws:
        await ws.send(prompt(text))
        tokens = [(await next_message(ws))["token"] for _ in range(2)]
        written = "".join(tokens)
        # Twilio had spoken the first three words when the caller started talking.
        spoken = " ".join(written.split()[:3]).lower()
        interrupt = {
            "type": "interrupt",
            "utteranceUntilInterrupt": spoken,
            "durationUntilInterruptMs": "900",
        }
        await ws.send(json.dumps(interrupt))
        # At most one token was already on its way; then nothing more of that reply.
        late: list[dict[str, Any]] = []
        with pytest.raises(TimeoutError):
            while True:
                late.append(await next_message(ws, timeout=QUIET_S))
        assert len(late) <= 1
        assert echo.streams_cut_short == 1

        # The call goes on: the next thing said gets a whole reply.
        await ws.send(prompt("and what about rain"))
        tokens, _ = await spoken_reply(ws)
        assert "".join(tokens).startswith("You said: and what about rain")

    await eventually(lambda: len(captures(stack.db, session)) == 2)
    (user_text, agent_text, metadata), _ = captures(stack.db, session)
    assert user_text == text
    assert agent_text == "You said: tell"
    assert metadata["cancelled"] is True
    assert metadata["interrupted"]["heard_ms"] == 900
    assert metadata["interrupted"]["written_text"].startswith(written)


async def test_a_goodbye_is_followed_by_the_summary_and_the_end(
    stack: Stack, echo: OpenAIWireServer, keys: Redis
) -> None:
    sid = "CAbye"
    session = f"twilio_{sid}"
    async with relay(stack, sid) as ws:
        await ws.send(prompt("I learned that bees dance to share directions"))
        await spoken_reply(ws)
        await ws.send(prompt("goodbye"))
        reply, _ = await spoken_reply(ws)
        assert "".join(reply).startswith("You said: goodbye")
        summary, _ = await spoken_reply(ws)
        assert "bees" in "".join(summary)
        end = await next_message(ws)
        assert end["type"] == "end"
        assert json.loads(end["handoffData"]) == {"reason": "goodbye", "session_id": session}
    assert not await keys.exists(Keys.context(session))
    ended = await webhook(
        stack.telephony,
        f"/twilio/relay-ended?session_id={session}",
        call(sid, SessionStatus="ended", HandoffData=end["handoffData"]),
    )
    assert [child.tag for child in twiml(ended)] == ["Hangup"]
    # Ended once: the relay's close and the goodbye do not both end it.
    await asyncio.sleep(QUIET_S)
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await keys.xrange(SESSION_END_REQUESTED))
    ends = [fields for _, fields in entries if session.encode() in b"".join(fields.values())]
    assert len(ends) == 1


async def test_a_silent_line_is_asked_again_then_ended(
    stack: Stack, echo: OpenAIWireServer, keys: Redis
) -> None:
    published = await keys.xlen(UTTERANCE_RECEIVED)
    async with relay(stack, "CAquiet") as ws:
        for _ in range(2):
            await ws.send(prompt("  "))
            assert await next_message(ws) == {"type": "text", "token": NOT_HEARD, "last": True}
        await ws.send(prompt(""))
        assert await next_message(ws) == {"type": "text", "token": GOODBYE, "last": True}
        end = await next_message(ws)
        assert end["type"] == "end" and json.loads(end["handoffData"])["reason"] == "silence"
    assert await keys.xlen(UTTERANCE_RECEIVED) == published


async def test_asking_to_link_the_phone_is_answered_by_telephony_alone(
    stack: Stack, echo: OpenAIWireServer, keys: Redis
) -> None:
    published, asked = await keys.xlen(UTTERANCE_RECEIVED), len(echo.requests)
    async with relay(stack, "CAlinking") as ws:
        await ws.send(prompt("Could you link my phone?"))
        # AUTH_MODE=open: one learner already, so nothing to link, and it says so.
        assert await next_message(ws) == {"type": "text", "token": OPEN_MODE, "last": True}
    assert await keys.xlen(UTTERANCE_RECEIVED) == published
    assert len(echo.requests) == asked


async def test_a_failed_relay_session_goes_on_in_gather_mode(stack: Stack) -> None:
    session = "twilio_CAfail"
    failed = await webhook(
        stack.telephony,
        f"/twilio/relay-ended?session_id={session}",
        call("CAfail", SessionStatus="failed"),
    )
    root = twiml(failed)
    gather = root.find("Gather")
    assert gather is not None and gather.attrib["action"].startswith("/twilio/process-speech?")
    assert [say.text for say in root.iter("Say")] == [APOLOGY]


async def test_forged_relay_handshakes_are_refused_and_publish_nothing(
    stack: Stack, echo: OpenAIWireServer, keys: Redis
) -> None:
    path = relay_path("twilio_CAforged")
    forged = {
        "no signature": None,
        "another token": signed_for(path, token="another-token"),
        "another call": signed_for(relay_path("twilio_CAother")),
        "https, not wss": str(RequestValidator(TOKEN).compute_signature(PUBLIC + path, {})),
    }
    published = await keys.xlen(UTTERANCE_RECEIVED)
    for what, signature in forged.items():
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with relay(stack, "CAforged", signature=signature) as ws:
                await ws.send(prompt("let me in"))
        assert refused.value.response.status_code == 403, what
    # Signed for its URL, but the setup names another call: closed, unanswered.
    async with relay(stack, "CAsneaky", path=path) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.send(prompt("let me in"))
            await next_message(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    await asyncio.sleep(QUIET_S)
    assert await keys.xlen(UTTERANCE_RECEIVED) == published
    assert not [r for r in list(echo.requests) if r.path.endswith("/chat/completions")]
