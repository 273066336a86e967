"""Two learners on one system (AUTH_MODE=token, real gateway, telephony, responder
and archiver on a private Redis, the model the OpenAI wire server repeating what it
is told): neither's search, history, stats or context shows the other's captures,
whether they talked over REST, Server-Sent Events or the WebSocket, and neither can
talk in the other's session. A caller is a learner of their own until they link
their phone with a code the call speaks; then their calls are in the account's
archive."""

import asyncio
import json
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import websockets

from services.gateway.tokens import issue_jwt
from services.telephony.privacy import caller_hash
from tests.support.redis_server import local_redis
from tests.support.services import ServiceProcess, running
from tests.support.stack import base_env, ws_url
from tests.wire.openai_server import OpenAIWireServer

SECRET = "integration-test-secret-of-more-than-32-bytes"
WAIT_S = 20.0
ADA, GRACE = "ada", "grace"
PHONE_SECRET = "learners-phone-hash-secret"
NUMBER = "+15557654321"
# Until linked, a caller is the learner of their number's keyed hash.
PHONE = f"phone:{caller_hash(NUMBER, PHONE_SECRET)}"
LINK_TRIES = 5  # PHONE_LINK_TRIES' default


@pytest.fixture(scope="module")
def stack(
    llm: OpenAIWireServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServiceProcess]]:
    tmp = tmp_path_factory.mktemp("learners")
    with local_redis() as redis:
        env = {
            **base_env(redis.url, llm, tmp / "archive.db"),
            "REPLY_TIMEOUT": "30",
            "AUTH_MODE": "token",
            "AUTH_SECRET": SECRET,
            # Telephony in local mode (no Twilio token: webhooks unsigned, loopback).
            "PHONE_HASH_SECRET": PHONE_SECRET,
        }
        with running(["archiver", "responder", "gateway", "telephony"], env, tmp) as services:
            yield services


@pytest.fixture(scope="module")
def gateway(stack: dict[str, ServiceProcess]) -> ServiceProcess:
    return stack["gateway"]


@pytest.fixture(scope="module")
def telephony(stack: dict[str, ServiceProcess]) -> ServiceProcess:
    return stack["telephony"]


def bearer(learner: str, *, admin: bool = False) -> dict[str, str]:
    token = issue_jwt(SECRET, learner, lifetime=timedelta(hours=1), admin=admin)
    return {"Authorization": f"Bearer {token}"}


async def call(
    gateway: ServiceProcess, method: str, path: str, learner: str, body: Any = None
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=WAIT_S) as client:
        return await client.request(method, path, json=body, headers=bearer(learner))


async def sse(gateway: ServiceProcess, learner: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=WAIT_S) as client:
        response = await client.post("/api/conversation/stream", json=body, headers=bearer(learner))
    return response


async def ws_talk(gateway: ServiceProcess, session: str, learner: str, text: str) -> dict[str, Any]:
    token = bearer(learner)["Authorization"].removeprefix("Bearer ")
    async with websockets.connect(ws_url(gateway, session)) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        assert json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))["type"] == "authenticated"
        await ws.send(json.dumps({"type": "text", "text": text}))
        answer: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
    return answer


async def found(gateway: ServiceProcess, learner: str, query: str) -> set[str]:
    response = await call(gateway, "POST", "/api/search", learner, {"query": query, "limit": 50})
    assert response.status_code == 200, response.text
    return {hit["user_text"] for hit in response.json()["results"]}


async def wait_archived(gateway: ServiceProcess, texts: dict[str, str]) -> None:
    """Until each learner finds each of their texts (the archive writes in batches)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        missing = [
            text
            for text, learner in texts.items()
            if text not in await found(gateway, learner, text)
        ]
        if not missing:
            return
        assert time.monotonic() < deadline, f"never archived: {missing}"
        await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
async def talked(gateway: ServiceProcess) -> dict[str, str]:
    """Each learner's words, said over each way in; text -> learner."""
    texts = {
        "ada ponders zanzibar tides": ADA,
        "ada streams zanzibar spices": ADA,
        "ada speaks of zanzibar dhows": ADA,
        "grace ponders quasar light": GRACE,
        "grace streams quasar jets": GRACE,
        "grace speaks of quasar redshift": GRACE,
    }
    for learner in (ADA, GRACE):
        said = [t for t, owner in texts.items() if owner == learner]
        rest = await call(
            gateway,
            "POST",
            "/api/conversation",
            learner,
            {"session_id": f"{learner}-rest", "text": said[0]},
        )
        assert rest.status_code == 200, rest.text
        streamed = await sse(gateway, learner, {"session_id": f"{learner}-sse", "text": said[1]})
        assert streamed.status_code == 200 and "event: response" in streamed.text
        answer = await ws_talk(gateway, f"{learner}-ws", learner, said[2])
        assert answer["type"] == "response", answer
    await wait_archived(gateway, texts)
    return texts


async def test_search_finds_only_ones_own_captures(
    gateway: ServiceProcess, talked: dict[str, str], echo: OpenAIWireServer
) -> None:
    for learner in (ADA, GRACE):
        mine = {t for t, owner in talked.items() if owner == learner}
        # Words both used ("ponders", "streams", "speaks") find one's own only.
        for word in ("ponders", "streams", "speaks"):
            assert await found(gateway, learner, word) == {t for t in mine if word in t.split()}
    assert await found(gateway, ADA, "quasar") == set()
    assert await found(gateway, GRACE, "zanzibar") == set()
    assert await found(gateway, "nobody", "ponders") == set()
    # An admin sees system-wide stats, not other learners' words.
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=WAIT_S) as client:
        admin = await client.post(
            "/api/search", json={"query": "ponders"}, headers=bearer("ops", admin=True)
        )
    assert admin.status_code == 200 and admin.json()["results"] == []


async def test_history_and_stats_are_ones_own(
    gateway: ServiceProcess, talked: dict[str, str]
) -> None:
    for learner, other in ((ADA, GRACE), (GRACE, ADA)):
        for way in ("rest", "sse", "ws"):
            own = await call(gateway, "GET", f"/api/session/{learner}-{way}/history", learner)
            assert own.status_code == 200 and own.json()["count"] == 1, own.text
            theirs = await call(gateway, "GET", f"/api/session/{other}-{way}/history", learner)
            assert theirs.status_code == 200 and theirs.json()["count"] == 0, theirs.text
        stats = (await call(gateway, "GET", "/api/stats", learner)).json()
        assert stats["database"]["total_captures"] == 3
        assert stats["database"]["unique_sessions"] == 3
        assert stats["sessions"]["ids"] == []
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=WAIT_S) as client:
        admin = await client.get("/api/stats", headers=bearer("ops", admin=True))
    assert admin.json()["database"]["total_captures"] == 6


async def test_nobody_talks_in_anothers_session(
    gateway: ServiceProcess, talked: dict[str, str], echo: OpenAIWireServer
) -> None:
    before = len(echo.requests)
    body = {"session_id": "ada-rest", "text": "what did ada say?"}
    rest = await call(gateway, "POST", "/api/conversation", GRACE, body)
    assert rest.status_code == 403, rest.text
    assert rest.json()["code"] == "session_taken" and "another learner" in rest.json()["detail"]
    streamed = await sse(gateway, GRACE, {"session_id": "ada-sse", "text": "and here?"})
    assert streamed.status_code == 403 and streamed.json()["code"] == "session_taken"

    token = bearer(GRACE)["Authorization"].removeprefix("Bearer ")
    async with websockets.connect(ws_url(gateway, "ada-ws")) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        assert json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))["type"] == "authenticated"
        refused = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), WAIT_S)
    assert (refused["type"], refused["code"]) == ("error", "session_taken")
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    # Nothing of it reached the model: Ada's context was never read for Grace.
    assert len(echo.requests) == before

    # Ada herself goes on in her session, with her own words as its context.
    again = await ws_talk(gateway, "ada-rest", ADA, "and the monsoon?")
    assert again["agent_text"].startswith("You said: and the monsoon?")
    prompt = json.dumps(echo.requests[-1].body["messages"])
    assert "zanzibar tides" in prompt and "quasar" not in prompt


async def phone_says(telephony: ServiceProcess, sid: str, speech: str, **form: str) -> str:
    """What a Gather-mode call hears back for `speech` (local mode: unsigned)."""
    params = {"CallSid": sid, "From": NUMBER, "SpeechResult": speech, "Confidence": "0.9"}
    async with httpx.AsyncClient(base_url=telephony.base_url, timeout=WAIT_S) as client:
        response = await client.post(
            f"/twilio/process-speech?session_id=twilio_{sid}", data=params | form
        )
    assert response.status_code == 200, response.text
    return " ".join(say.text or "" for say in ET.fromstring(response.text).iter("Say"))


async def link(gateway: ServiceProcess, learner: str, code: str) -> httpx.Response:
    return await call(gateway, "POST", "/api/phone-link", learner, {"code": code})


async def test_a_linked_phone_shares_the_learners_archive(
    gateway: ServiceProcess, telephony: ServiceProcess, echo: OpenAIWireServer
) -> None:
    before = await phone_says(telephony, "CAlink1", "mangroves before linking")
    assert before.startswith("You said: mangroves before linking")
    # Until linked, the number is a learner of its own: Ada's archive lacks it.
    await wait_archived(gateway, {"mangroves before linking": PHONE})
    assert await found(gateway, ADA, "mangroves") == set()

    asked = len(echo.requests)
    heard = await phone_says(telephony, "CAlink1", "Please link my phone.")
    digits = re.search(r"link code is ((?:\d, ){5}\d)", heard)
    assert digits is not None, heard
    code = digits.group(1).replace(", ", "")
    # Answered by telephony itself: the model never saw the request or the code.
    assert len(echo.requests) == asked

    wrong = await link(gateway, ADA, "111111" if code == "000000" else "000000")
    assert wrong.status_code == 400 and wrong.json()["code"] == "invalid_code", wrong.text
    linked = await link(gateway, ADA, f"{code[:3]} {code[3:]}")
    assert linked.status_code == 200, linked.text
    assert linked.json() == {"linked": True, "learner": ADA}
    again = await link(gateway, GRACE, code)
    assert again.status_code == 400 and again.json()["code"] == "invalid_code"

    # The call under way stays the number's (one call, one archive); the next is Ada's.
    await phone_says(telephony, "CAlink1", "mangroves still on the first call")
    after = await phone_says(telephony, "CAlink2", "mangroves after linking")
    assert after.startswith("You said: mangroves after linking")
    await wait_archived(
        gateway,
        {"mangroves after linking": ADA, "mangroves still on the first call": PHONE},
    )
    assert await found(gateway, ADA, "mangroves") == {"mangroves after linking"}
    assert await found(gateway, GRACE, "mangroves") == set()


async def test_link_codes_are_not_to_be_guessed_or_had_without_a_number(
    gateway: ServiceProcess, telephony: ServiceProcess
) -> None:
    withheld = await phone_says(telephony, "CAhidden", "link my number", From="")
    assert "withheld" in withheld and "code is" not in withheld
    tries = [await link(gateway, "guesser", f"{n:06d}") for n in range(LINK_TRIES + 1)]
    assert [r.status_code for r in tries[:LINK_TRIES]] == [400] * LINK_TRIES
    assert tries[-1].status_code == 429 and tries[-1].json()["code"] == "too_many_tries"
    assert 1 <= int(tries[-1].headers["Retry-After"]) <= 60
    malformed = await link(gateway, "typist", "12ab56")
    assert malformed.status_code == 400 and "6 digits" in malformed.json()["detail"]
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=WAIT_S) as client:
        anonymous = await client.post("/api/phone-link", json={"code": "123456"})
    assert anonymous.status_code == 401, anonymous.text
