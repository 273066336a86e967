"""AUTH_MODE=token on real processes: a gateway, a responder and an archiver on a
private Redis, the model the OpenAI wire server repeating what it is told.

Missing, wrong, expired, tampered and `alg: none` tokens, and revoked API keys and
JWTs, get 401 with a reason on REST and on Server-Sent Events; on the WebSocket
they get an `error` and close code 1008, as do silence past the auth timeout, any
other first message, a token in the URL, and a ticket used twice or expired. Good
credentials talk, and what they publish carries their learner. An open-mode
gateway on the same workers serves a v1 client as before, and refuses to listen
beyond loopback.
"""

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
import pytest
import websockets
from redis.asyncio import Redis

from services.gateway.tokens import digest, issue_jwt
from shared.dead_letters import message_body
from shared.streams import ARCHIVE_QUERIES, SESSION_END_REQUESTED, UTTERANCE_RECEIVED, Keys
from tests.support.redis_server import local_redis
from tests.support.services import ROOT, ServiceProcess, running, start_service
from tests.support.stack import base_env, ws_url
from tests.wire.openai_server import OpenAIWireServer

SECRET = "integration-test-secret-of-more-than-32-bytes"
AUTH_TIMEOUT_S = 1.0
WAIT_S = 20.0


@dataclass
class Stack:
    gateway: ServiceProcess
    open_gateway: ServiceProcess
    env: dict[str, str]

    def tokens(
        self, *args: str, env: dict[str, str] | None = None
    ) -> "subprocess.CompletedProcess[str]":
        """`python -m scripts.tokens ...` with the stack's secret and Redis."""
        return subprocess.run(
            [sys.executable, "-m", "scripts.tokens", *args],
            cwd=ROOT,
            env={**os.environ, **self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
        )

    def credential(self, *args: str) -> str:
        done = self.tokens(*args)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def stack(llm: OpenAIWireServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("auth")
    with local_redis() as redis:
        env = {
            **base_env(redis.url, llm, tmp / "archive.db"),
            "REPLY_TIMEOUT": "30",
            "AUTH_MODE": "token",
            "AUTH_SECRET": SECRET,
            "WS_AUTH_TIMEOUT_S": str(AUTH_TIMEOUT_S),
        }
        with running(["archiver", "responder", "gateway"], env, tmp) as services:
            open_gateway = start_service(
                "gateway", {**env, "AUTH_MODE": "open"}, tmp, label="open-gateway"
            )
            try:
                yield Stack(services["gateway"], open_gateway, env)
            finally:
                open_gateway.stop()


@pytest.fixture
async def redis(stack: Stack) -> AsyncIterator[Redis]:
    client: Redis = Redis.from_url(stack.env["REDIS_URL"])
    yield client
    await client.aclose()


def jwt_for(learner: str, *, hours: float = 1, admin: bool = False, ago: float = 0) -> str:
    issued = datetime.now(UTC) - timedelta(hours=ago)
    return issue_jwt(SECRET, learner, lifetime=timedelta(hours=hours), admin=admin, now=issued)


def _b64(part: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


def tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    return f"{header}.{payload}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"


def forged_learner(token: str, learner: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return f"{header}.{_b64({**claims, 'sub': learner})}.{signature}"


def unsigned(learner: str) -> str:
    exp = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'sub': learner, 'exp': exp})}."


def bad_credentials() -> dict[str, tuple[dict[str, str], str]]:
    """Headers that must be refused, and the `code` each gets."""
    good = jwt_for("ada")
    return {
        "missing": ({}, "unauthenticated"),
        "another scheme": ({"Authorization": "Basic YWRhOmFkYQ=="}, "unauthenticated"),
        "bearer without a credential": ({"Authorization": "Bearer"}, "unauthenticated"),
        "wrong": ({"Authorization": "Bearer not-a-token"}, "invalid_token"),
        "another secret": (
            {"Authorization": "Bearer " + issue_jwt("x" * 40, "ada", lifetime=timedelta(hours=1))},
            "invalid_token",
        ),
        "expired": ({"Authorization": "Bearer " + jwt_for("ada", ago=2)}, "expired_token"),
        "tampered signature": ({"Authorization": "Bearer " + tampered(good)}, "invalid_token"),
        "tampered learner": (
            {"Authorization": "Bearer " + forged_learner(good, "grace")},
            "invalid_token",
        ),
        "alg none": ({"Authorization": "Bearer " + unsigned("ada")}, "invalid_token"),
        "unknown API key": ({"Authorization": "Bearer lva_" + "x" * 43}, "invalid_token"),
    }


BAD = bad_credentials()
ROUTES = [
    ("POST", "/api/conversation", {"session_id": "auth-rest", "text": "hello"}),
    ("POST", "/api/conversation/stream", {"session_id": "auth-sse", "text": "hello"}),
    ("POST", "/api/search", {"query": "hello"}),
    ("GET", "/api/stats", None),
    ("GET", "/api/session/auth-rest/history", None),
    ("POST", "/api/ws-ticket", None),
]


async def call(
    service: ServiceProcess, method: str, path: str, body: Any, headers: dict[str, str]
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=service.base_url, timeout=WAIT_S) as client:
        return await client.request(method, path, json=body, headers=headers)


def assert_refused(response: httpx.Response, code: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert body["code"] == code and body["detail"], body


async def published(redis: Redis, stream: str) -> list[dict[str, Any]]:
    """The events on `stream`, decoded (FastStream's JSON body)."""
    events = []
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(stream))
    for _, fields in entries:
        body = message_body(fields)
        assert body is not None
        events.append(json.loads(body))
    return events


# ---------------------------------------------------------------- REST and SSE


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[r[1] for r in ROUTES])
async def test_rest_and_sse_refuse_bad_credentials(
    stack: Stack, case: str, method: str, path: str, body: Any
) -> None:
    headers, code = BAD[case]
    assert_refused(await call(stack.gateway, method, path, body, headers), code)


async def test_a_good_token_talks_and_its_events_carry_the_learner(
    stack: Stack, echo: OpenAIWireServer, redis: Redis
) -> None:
    headers = {"Authorization": "Bearer " + jwt_for("ada")}
    body = {"session_id": "ada-rest", "text": "tides for ada"}
    response = await call(stack.gateway, "POST", "/api/conversation", body, headers)
    assert response.status_code == 200, response.text
    assert response.json()["agent_text"].startswith("You said: tides for ada")
    async with (
        httpx.AsyncClient(base_url=stack.gateway.base_url, timeout=WAIT_S) as client,
        client.stream(
            "POST",
            "/api/conversation/stream",
            json={"session_id": "ada-sse", "text": "streamed for ada"},
            headers=headers,
        ) as streamed,
    ):
        assert streamed.status_code == 200
        text = "".join([chunk async for chunk in streamed.aiter_text()])
    assert "event: response" in text
    learners = {e["text"]: e["learner"] for e in await published(redis, UTTERANCE_RECEIVED)}
    assert learners["tides for ada"] == "ada" and learners["streamed for ada"] == "ada"


async def test_stats_are_everyones_for_an_admin_and_ones_own_for_a_learner(
    stack: Stack, redis: Redis
) -> None:
    admin = {"Authorization": "Bearer " + jwt_for("ops", admin=True)}
    learner = {"Authorization": "Bearer " + jwt_for("ada")}
    as_admin = await call(stack.gateway, "GET", "/api/stats", None, admin)
    as_learner = await call(stack.gateway, "GET", "/api/stats", None, learner)
    assert as_admin.status_code == as_learner.status_code == 200
    assert as_learner.json()["sessions"]["ids"] == [] and as_learner.json()["dead_letters"] == {}
    stats = [q for q in await published(redis, ARCHIVE_QUERIES) if q["kind"] == "stats"]
    assert [q["learner"] for q in stats[-2:]] == [None, "ada"]
    found = await call(stack.gateway, "POST", "/api/search", {"query": "tides"}, learner)
    assert found.status_code == 200
    (search,) = [q for q in await published(redis, ARCHIVE_QUERIES) if q["kind"] == "search"][-1:]
    assert search["learner"] == "ada"


async def test_api_keys_work_until_revoked_and_jwts_until_revoked(
    stack: Stack, echo: OpenAIWireServer
) -> None:
    key = stack.credential("api-key", "--learner", "script-1", "--label", "nightly")
    assert key.startswith("lva_")
    listed = [json.loads(line) for line in stack.tokens("list").stdout.splitlines()]
    assert [(k["learner"], k["label"]) for k in listed] == [("script-1", "nightly")]
    assert key not in json.dumps(listed)
    headers = {"Authorization": f"Bearer {key}"}
    assert (await call(stack.gateway, "GET", "/api/stats", None, headers)).status_code == 200
    revoked = stack.tokens("revoke", key)
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["learner"] == "script-1"
    for method, path, body in ROUTES:
        assert_refused(await call(stack.gateway, method, path, body, headers), "invalid_token")
    assert stack.tokens("revoke", key).returncode == 1, "revoked twice"

    token = stack.credential("issue", "--learner", "ada", "--hours", "1")
    headers = {"Authorization": f"Bearer {token}"}
    assert (await call(stack.gateway, "GET", "/api/stats", None, headers)).status_code == 200
    assert stack.tokens("revoke", token).returncode == 0
    assert_refused(await call(stack.gateway, "GET", "/api/stats", None, headers), "invalid_token")


def test_the_script_will_not_sign_without_a_good_secret(stack: Stack) -> None:
    for secret in ("", "too-short"):
        done = stack.tokens("issue", "--learner", "ada", env={"AUTH_SECRET": secret})
        assert done.returncode != 0 and "AUTH_SECRET" in done.stderr and not done.stdout


# ---------------------------------------------------------------- WebSocket


async def refusal(url: str, *first: str) -> tuple[dict[str, Any], int]:
    """The one message a refused connection gets, and its close code."""
    async with websockets.connect(url) as ws:
        for message in first:
            await ws.send(message)
        got: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), WAIT_S)
    assert closed.value.rcvd is not None
    return got, closed.value.rcvd.code


def auth(token: str, **extra: str) -> str:
    return json.dumps({"type": "auth", "token": token, **extra})


async def ask(ws: Any, message: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps(message))
    answer: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
    return answer


async def test_first_message_auth_then_talk(
    stack: Stack, echo: OpenAIWireServer, redis: Redis
) -> None:
    async with websockets.connect(ws_url(stack.gateway, "ada-ws")) as ws:
        await ws.send(auth(jwt_for("ada"), id="a1"))
        # Pipelined: sent before the answer to `auth`, answered after it.
        await ws.send(json.dumps({"type": "text", "text": "volcanoes for ada"}))
        ok = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
        assert ok == {"type": "authenticated", "learner": "ada", "id": "a1"}
        reply = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
        assert reply["type"] == "response" and reply["agent_text"].startswith(
            "You said: volcanoes for ada"
        )
        again = await ask(ws, {"type": "auth", "token": jwt_for("grace")})
        assert again["code"] == "already_authenticated"
        assert (await ask(ws, {"type": "end"}))["type"] == "summary"
    learners = {e["text"]: e["learner"] for e in await published(redis, UTTERANCE_RECEIVED)}
    assert learners["volcanoes for ada"] == "ada"
    (end,) = [
        e for e in await published(redis, SESSION_END_REQUESTED) if e["session_id"] == "ada-ws"
    ]
    assert end["learner"] == "ada"


async def test_an_api_key_authenticates_a_websocket(stack: Stack, echo: OpenAIWireServer) -> None:
    key = stack.credential("api-key", "--learner", "script-2")
    async with websockets.connect(ws_url(stack.gateway, "key-ws")) as ws:
        assert (await ask(ws, {"type": "auth", "token": key}))["learner"] == "script-2"
        assert (await ask(ws, {"type": "ping"}))["type"] == "pong"
    assert stack.tokens("revoke", key).returncode == 0
    message, code = await refusal(ws_url(stack.gateway, "key-ws"), auth(key))
    assert (message["type"], message["code"], code) == ("error", "invalid_token", 1008)


@pytest.mark.parametrize(
    ("first", "code"),
    [
        (auth("not-a-token"), "invalid_token"),
        (auth(tampered(jwt_for("ada"))), "invalid_token"),
        (auth(forged_learner(jwt_for("ada"), "grace")), "invalid_token"),
        (auth(unsigned("ada")), "invalid_token"),
        (auth(jwt_for("ada", ago=2)), "expired_token"),
        (auth("lva_" + "y" * 43), "invalid_token"),
        (json.dumps({"type": "auth"}), "unauthenticated"),
        (json.dumps({"type": "text", "text": "let me in"}), "unauthenticated"),
        (json.dumps({"type": "ping"}), "unauthenticated"),
        ("not json", "unauthenticated"),
    ],
    ids=[
        "wrong",
        "tampered",
        "forged learner",
        "alg none",
        "expired",
        "unknown API key",
        "no token",
        "text first",
        "ping first",
        "not json",
    ],
)
async def test_websocket_refuses_bad_first_messages(
    stack: Stack, redis: Redis, first: str, code: str
) -> None:
    message, close = await refusal(ws_url(stack.gateway, "refused-ws"), first)
    assert (message["type"], message["code"], close) == ("error", code, 1008)
    assert message["message"]
    texts = {e["text"] for e in await published(redis, UTTERANCE_RECEIVED)}
    assert "let me in" not in texts


async def test_websocket_without_auth_is_closed_after_the_timeout(stack: Stack) -> None:
    began = asyncio.get_running_loop().time()
    message, code = await refusal(ws_url(stack.gateway, "silent-ws"))
    took = asyncio.get_running_loop().time() - began
    assert (message["code"], code) == ("unauthenticated", 1008)
    assert AUTH_TIMEOUT_S * 0.9 <= took < AUTH_TIMEOUT_S + 5


async def test_a_token_in_the_url_is_refused(stack: Stack) -> None:
    for param in ("token", "access_token"):
        url = ws_url(stack.gateway, "url-ws") + f"?{param}=" + jwt_for("ada")
        message, code = await refusal(url)
        assert (message["code"], code) == ("unauthenticated", 1008)
        assert "URL" in message["message"]
        # uvicorn logs the URL; the gateway blanks the token in it.
        assert url.rsplit("=", 1)[1] not in stack.gateway.logs()


async def ticket(stack: Stack, token: str) -> str:
    headers = {"Authorization": f"Bearer {token}"}
    response = await call(stack.gateway, "POST", "/api/ws-ticket", None, headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["expires_in"] == 30
    return str(body["ticket"])


async def test_a_ticket_opens_one_websocket_once(
    stack: Stack, echo: OpenAIWireServer, redis: Redis
) -> None:
    token = jwt_for("ada")
    granted = await ticket(stack, token)
    assert 25 <= await redis.ttl(Keys.ws_ticket(digest(granted))) <= 30
    url = ws_url(stack.gateway, "ticket-ws") + f"?stream=1&ticket={granted}"
    async with websockets.connect(url) as ws:
        # Authenticated at the handshake: the first message is a conversation.
        await ws.send(json.dumps({"type": "text", "text": "ticketed words"}))
        kinds: list[str] = []
        while not kinds or kinds[-1] != "response":
            kinds.append(json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))["type"])
        assert kinds[0] == "delta"
    learners = {e["text"]: e["learner"] for e in await published(redis, UTTERANCE_RECEIVED)}
    assert learners["ticketed words"] == "ada"
    message, code = await refusal(url)
    assert (message["code"], code) == ("invalid_ticket", 1008)
    # Neither the ticket nor the token is in the gateway's log, where uvicorn writes URLs.
    logs = stack.gateway.logs()
    assert "ticket=[redacted]" in logs
    assert granted not in logs and token not in logs


async def test_an_expired_or_made_up_ticket_is_refused(stack: Stack, redis: Redis) -> None:
    granted = await ticket(stack, jwt_for("ada"))
    await redis.pexpire(Keys.ws_ticket(digest(granted)), 1)
    await asyncio.sleep(0.05)
    for attempt in (granted, "made-up", ""):
        message, code = await refusal(ws_url(stack.gateway, "late-ws") + f"?ticket={attempt}")
        assert (message["code"], code) == ("invalid_ticket", 1008)


async def test_a_ticket_needs_a_credential(stack: Stack) -> None:
    assert_refused(await call(stack.gateway, "POST", "/api/ws-ticket", None, {}), "unauthenticated")


# ---------------------------------------------------------------- open mode


async def test_open_mode_is_v1_for_every_client(
    stack: Stack, echo: OpenAIWireServer, redis: Redis
) -> None:
    service = stack.open_gateway
    assert "AUTH_MODE=open: everyone is learner 'local'; loopback only" in service.logs()
    async with websockets.connect(ws_url(service, "open-ws")) as ws:
        reply = await ask(ws, {"type": "text", "text": "open words"})
        assert reply["type"] == "response" and reply["agent_text"].startswith(
            "You said: open words"
        )
        assert (await ask(ws, {"type": "ping"})) == {"type": "pong"}
        assert (await ask(ws, {"type": "auth", "token": "anything"}))["learner"] == "local"
        assert (await ask(ws, {"type": "end"}))["type"] == "summary"
    body = {"session_id": "open-rest", "text": "open rest"}
    assert (await call(service, "POST", "/api/conversation", body, {})).status_code == 200
    # A bad header is no matter in open mode: nobody is asked for one.
    stats = await call(service, "GET", "/api/stats", None, {"Authorization": "Bearer junk"})
    assert stats.status_code == 200 and "open-rest" in stats.json()["sessions"]["ids"]
    learners = {e["text"]: e["learner"] for e in await published(redis, UTTERANCE_RECEIVED)}
    assert learners["open words"] == learners["open rest"] == "local"


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"HOST": "0.0.0.0", "AUTH_MODE": "open"}, "HOST=0.0.0.0"),
        ({"HOST": "127.0.0.1", "AUTH_MODE": "token", "AUTH_SECRET": ""}, "AUTH_SECRET is not set"),
        ({"HOST": "0.0.0.0", "AUTH_MODE": "token", "AUTH_SECRET": "short"}, "shorter than 32"),
    ],
)
def test_the_gateway_refuses_to_start_unprotected(env: dict[str, str], reason: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.gateway"],
        cwd=ROOT,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("AUTH_")},
            "REDIS_URL": "redis://127.0.0.1:1",  # never reached: it stops before connecting
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "gateway will not start" in done.stderr and reason in done.stderr, done.stderr
