"""Back-pressure: while MAX_BACKLOG entries wait for their workers, the gateway and
telephony refuse new requests before publishing them (503 with Retry-After, an
`error` on a WebSocket that stays open, the caller's apology), and take them again
once the workers caught up. The backlog is the consumer group's lag, read in the
background; a reading that fails or is stale refuses nothing."""

import asyncio
import base64
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import websockets
from redis.asyncio import Redis

from services.telephony.twiml import APOLOGY
from shared.backlog import READ_EVERY_S, RETRY_AFTER_S, STALE_AFTER_S, Backlog, waiting
from shared.streams import AUDIO_RECEIVED, UTTERANCE_RECEIVED, Groups
from tests.support.services import ServiceProcess, start_service
from tests.support.stack import base_env, eventually, ws_url
from tests.wire.openai_server import OpenAIWireServer

LIMIT = 5
# Long enough for the gateway's gauge to have read what the test just did.
GAUGE_READ_S = 3 * READ_EVERY_S


async def lag(redis: Redis) -> int:
    return await waiting(redis, UTTERANCE_RECEIVED, Groups.RESPONDER)


async def until(probe: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await probe():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_the_backlog_is_what_no_worker_was_given_and_counted_where_redis_does_not_say(
    redis: Redis,
) -> None:
    assert await waiting(redis, UTTERANCE_RECEIVED, Groups.RESPONDER) == 0  # no stream yet
    ids = [await redis.xadd(UTTERANCE_RECEIVED, {"n": str(n)}) for n in range(4)]
    # No group yet: the responder's will be created at the stream's start, so all wait.
    assert await waiting(redis, UTTERANCE_RECEIVED, Groups.RESPONDER) == 4

    await redis.xgroup_create(UTTERANCE_RECEIVED, Groups.RESPONDER, id="0")
    await redis.xreadgroup(Groups.RESPONDER, "r1", {UTTERANCE_RECEIVED: ">"}, count=1)
    # The one being worked on (pending) is not waiting.
    assert await waiting(redis, UTTERANCE_RECEIVED, Groups.RESPONDER) == 3

    # An entry deleted past the last delivered one leaves Redis 7 without a lag (and
    # Redis before 7 never has one): counted past the last delivered entry.
    await redis.xdel(UTTERANCE_RECEIVED, ids[2])
    [group] = await redis.xinfo_groups(UTTERANCE_RECEIVED)
    assert group.get("lag") is None
    assert await waiting(redis, UTTERANCE_RECEIVED, Groups.RESPONDER) == 2
    # Other groups' progress is not the responder's.
    assert await waiting(redis, AUDIO_RECEIVED, Groups.TRANSCRIBER) == 0


async def test_a_reading_at_the_limit_refuses_what_waits_on_that_stream_and_a_stale_one_nothing(
    redis: Redis,
) -> None:
    now = [100.0]
    backlog = Backlog(redis, 2, clock=lambda: now[0])
    assert backlog.behind(UTTERANCE_RECEIVED) is None  # nothing read yet
    await redis.xadd(UTTERANCE_RECEIVED, {"n": "1"})
    await backlog.read()
    assert backlog.behind(UTTERANCE_RECEIVED) is None  # below the limit
    await redis.xadd(UTTERANCE_RECEIVED, {"n": "2"})
    await backlog.read()
    assert backlog.behind(UTTERANCE_RECEIVED) == (UTTERANCE_RECEIVED, 2)
    # A clip is answered by the responder too, once transcribed: it is refused as well.
    assert backlog.behind(AUDIO_RECEIVED) == (UTTERANCE_RECEIVED, 2)

    now[0] += STALE_AFTER_S + 0.1
    assert backlog.behind(UTTERANCE_RECEIVED) is None  # not read for too long

    await redis.delete(UTTERANCE_RECEIVED)
    for n in range(3):
        await redis.xadd(AUDIO_RECEIVED, {"n": str(n)})
    await backlog.read()
    assert backlog.behind(AUDIO_RECEIVED) == (AUDIO_RECEIVED, 3)
    # Text does not wait for the transcriber.
    assert backlog.behind(UTTERANCE_RECEIVED) is None

    unlimited = Backlog(redis, 0)
    await unlimited.read()
    assert unlimited.behind(AUDIO_RECEIVED) is None
    await asyncio.wait_for(unlimited.run(), 1)  # returns at once: nothing to watch


async def test_a_backlog_that_cannot_be_read_refuses_nothing(redis: Redis) -> None:
    for n in range(3):
        await redis.xadd(UTTERANCE_RECEIVED, {"n": str(n)})
    backlog = Backlog(redis, 2, every_s=0.05)
    running = asyncio.create_task(backlog.run())
    try:
        await eventually(lambda: backlog.behind(UTTERANCE_RECEIVED) is not None, timeout=5)
        # Redis refuses the read (the key is not a stream): unknown, not over.
        await redis.delete(UTTERANCE_RECEIVED)
        await redis.set(UTTERANCE_RECEIVED, "not a stream")
        await eventually(lambda: backlog.behind(UTTERANCE_RECEIVED) is None, timeout=5)
    finally:
        running.cancel()


def refused(samples: str, source: str) -> float:
    prefix = f'lva_requests_refused_total{{reason="backlog",source="{source}"}} '
    return sum(
        float(line[len(prefix) :]) for line in samples.splitlines() if line.startswith(prefix)
    )


async def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["code"] == "busy", body
    assert f"({LIMIT} messages waiting)" in body["detail"], body
    assert response.headers["retry-after"] == str(RETRY_AFTER_S)


async def test_the_gateway_refuses_while_the_responder_is_behind_and_takes_again_after(
    redis: Redis, redis_url: str, echo: OpenAIWireServer, tmp_path: Path
) -> None:
    # The responder's group, as a responder that stopped leaves it.
    await redis.xgroup_create(UTTERANCE_RECEIVED, Groups.RESPONDER, id="0", mkstream=True)
    env = {
        **base_env(redis_url, echo, tmp_path / "archive.db"),
        "MAX_BACKLOG": str(LIMIT),
        "REPLY_TIMEOUT": "3",
    }
    gateway = start_service("gateway", env, tmp_path)
    responder: ServiceProcess | None = None
    try:
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client:
            # LIMIT requests arrive together: taken, and waiting for a responder.
            waiting_ones = asyncio.gather(
                *(
                    client.post(
                        "/api/conversation", json={"session_id": "behind", "text": f"queued {n}"}
                    )
                    for n in range(LIMIT)
                )
            )

            async def all_waiting() -> bool:
                return await lag(redis) >= LIMIT

            await until(all_waiting, timeout=10)
            await asyncio.sleep(GAUGE_READ_S)

            text = {"session_id": "behind", "text": "one too many"}
            await assert_refused(await client.post("/api/conversation", json=text))
            await assert_refused(await client.post("/api/conversation/stream", json=text))
            clip = base64.b64encode(os.urandom(2000)).decode()
            audio = {"session_id": "behind", "audio_base64": clip}
            await assert_refused(await client.post("/api/conversation", json=audio))

            async with websockets.connect(ws_url(gateway, "behind-ws")) as ws:
                for n in range(2):
                    await ws.send(json.dumps({"type": "text", "text": f"ws {n}", "id": f"m{n}"}))
                    answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    assert answer["type"] == "error", answer
                    assert (answer["code"], answer["id"]) == ("busy", f"m{n}"), answer
                    assert f"({LIMIT} messages waiting)" in answer["message"]
                    # The connection stays usable.
                    await ws.send(json.dumps({"type": "ping"}))
                    assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "pong"}

            # Nothing past the limit was published, nor a refused clip stored.
            assert await redis.xlen(UTTERANCE_RECEIVED) == LIMIT
            assert await redis.xlen(AUDIO_RECEIVED) == 0
            assert [k async for k in redis.scan_iter("audio:*")] == []
            metrics = (await client.get("/metrics")).text
            assert refused(metrics, "api") == 3
            assert refused(metrics, "websocket") == 2

            # The ones taken were waiting for a responder that never came.
            assert {r.status_code for r in await waiting_ones} == {504}

            responder = start_service("responder", env, tmp_path)

            async def drained() -> bool:
                return await lag(redis) == 0

            await until(drained, timeout=30)
            await asyncio.sleep(GAUGE_READ_S)
            answered = await client.post("/api/conversation", json={**text, "text": "heard"})
            assert answered.status_code == 200, answered.text
            assert "heard" in answered.json()["agent_text"]
            async with websockets.connect(ws_url(gateway, "behind-ws")) as ws:
                await ws.send(json.dumps({"type": "text", "text": "heard too", "id": "m9"}))
                answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert answer["type"] == "response", answer
                assert "heard too" in answer["agent_text"]
    finally:
        if responder is not None:
            responder.stop()
        gateway.stop()


async def test_a_caller_hears_the_apology_while_the_responder_is_behind(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    # An entry waits already (nothing reads it in this test).
    await redis.xadd(UTTERANCE_RECEIVED, {"n": "1"})
    env = {"REDIS_URL": redis_url, "MAX_BACKLOG": "1"}
    telephony = start_service("telephony", env, tmp_path)
    try:
        await asyncio.sleep(GAUGE_READ_S)
        form = {"CallSid": "CAbehind", "SpeechResult": "Tell me about tides", "Confidence": "0.9"}
        began = time.monotonic()
        async with httpx.AsyncClient(base_url=telephony.base_url, timeout=30) as client:
            response = await client.post(
                "/twilio/process-speech?session_id=twilio_CAbehind", data=form
            )
        assert response.status_code == 200, response.text
        assert APOLOGY in response.text
        # At once, not after REPLY_DEADLINE or REPLY_TIMEOUT: nothing was asked.
        assert time.monotonic() - began < 2
        assert await redis.xlen(UTTERANCE_RECEIVED) == 1
    finally:
        telephony.stop()
