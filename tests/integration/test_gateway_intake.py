"""Large input at the gateway: decoded off the event loop, within a memory budget that
all connections share (WebSocket and REST alike), and the memory given back off the
loop when the last connection closes."""

import asyncio
import base64
import gc
import json
import os
import threading
import time
from pathlib import Path

import pytest
import websockets
from redis.asyncio import Redis

from services.gateway import intake, memory, validation
from services.gateway.intake import AudioBudget
from services.gateway.memory import ConnectionGauge
from services.gateway.validation import InputError
from shared.streams import AUDIO_RECEIVED
from tests.support.gateway import gateway_in_process
from tests.support.loop_probe import ticks_during
from tests.support.services import start_service
from tests.support.stack import ws_url

TICK_S = 0.01
CLIP_BYTES = 25 * 1024 * 1024


@pytest.fixture(scope="module")
def big_clip() -> str:
    return base64.b64encode(os.urandom(CLIP_BYTES)).decode()


async def test_a_25_mb_clip_is_decoded_with_the_loop_free(big_clip: str) -> None:
    decoded: list[bytes] = []

    async def decode() -> None:
        decoded.append(await intake.decode_audio(big_clip, CLIP_BYTES))

    ticks, possible = await ticks_during(decode, TICK_S)
    assert len(decoded[0]) == CLIP_BYTES
    # The pieces leave room for the loop between them (allow half for a busy machine).
    assert ticks >= 0.5 * possible, f"{ticks} of {possible:.0f} possible ticks"


async def test_the_probe_sees_a_decode_that_blocks_the_loop(big_clip: str) -> None:
    async def decode_on_the_loop() -> None:
        validation.audio_base64(big_clip, CLIP_BYTES)

    ticks, possible = await ticks_during(decode_on_the_loop, TICK_S)
    assert possible > 5, "decoding 25 MB should take a while"
    assert ticks <= 1, f"{ticks} of {possible:.0f}: the loop ran while it was blocked?"


async def test_a_large_message_is_parsed_off_the_loop_and_equals_the_inline_parse(
    big_clip: str,
) -> None:
    raw = json.dumps({"type": "audio", "audio": big_clip[:200_000]})
    assert await intake.parse_json(raw) == json.loads(raw)
    with pytest.raises(ValueError):
        await intake.parse_json("{" + "x" * 100_000)


def test_the_budget_refuses_beyond_its_size_and_gets_it_back() -> None:
    budget = AudioBudget(100)
    first = budget.reserve(60)
    with pytest.raises(InputError) as refused:
        budget.reserve(60)
    assert (refused.value.status, refused.value.code) == (503, "busy")
    first.release()
    first.release()  # once only
    assert budget.held == 0
    budget.reserve(100).release()


async def test_a_clip_that_fails_to_decode_gives_its_share_back() -> None:
    budget = AudioBudget(1000)
    with pytest.raises(InputError):
        await budget.decode("not base64 at all!", 1000)
    assert budget.held == 0


async def test_one_gateway_holds_at_most_its_budget_of_audio(
    redis_url: str, tmp_path: Path
) -> None:
    # No transcriber: the first clip waits for its reply, later ones wait in the
    # connection's queue holding their bytes, until the budget says no.
    clip = base64.b64encode(os.urandom(60_000)).decode()
    env = {"REDIS_URL": redis_url, "MAX_AUDIO_BYTES_HELD": "100000", "REPLY_TIMEOUT": "3"}
    gateway = start_service("gateway", env, tmp_path)
    try:
        async with websockets.connect(ws_url(gateway, "budget"), max_size=None) as ws:
            for _ in range(4):
                await ws.send(json.dumps({"type": "audio", "audio": clip}))
            answers = [json.loads(await asyncio.wait_for(ws.recv(), 30)) for _ in range(4)]
            codes = [a.get("code") for a in answers]
            assert "busy" in codes, answers
            busy = next(a for a in answers if a.get("code") == "busy")
            assert "too much audio" in busy["message"]
            # The others were accepted and timed out waiting for a transcriber.
            assert set(codes) <= {"busy", "timeout"}, answers
            # Everything was given back: a new clip is accepted again.
            await ws.send(json.dumps({"type": "audio", "audio": clip}))
            answer = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert answer["code"] == "timeout", answer
    finally:
        gateway.stop()


async def test_a_rest_clip_is_refused_while_the_budget_is_spent_and_taken_once_it_is_free(
    redis: Redis, redis_url: str
) -> None:
    clip = base64.b64encode(os.urandom(60_000)).decode()
    request = {"session_id": "budget-rest", "audio_base64": clip}
    gateway = gateway_in_process(redis_url, max_audio_bytes_held=100_000, reply_timeout=1)
    async with gateway as (app, client):
        budget: AudioBudget = app.state.audio_budget
        # What other learners' clips hold while they wait for their turn.
        others = budget.reserve(60_000)
        for path in ("/api/conversation", "/api/conversation/stream"):
            refused = await client.post(path, json=request)
            assert refused.status_code == 503, refused.text
            assert refused.json()["code"] == "busy", refused.text
            assert "too much audio" in refused.json()["detail"]
        assert await redis.xlen(AUDIO_RECEIVED) == 0, "a refused clip was published"
        assert budget.held == 60_000

        others.release()
        # No transcriber: the clip is taken and published, and its reply times out.
        accepted = await client.post("/api/conversation", json=request)
        assert accepted.status_code == 504, accepted.text
        assert accepted.json()["code"] == "timeout"
        assert await redis.xlen(AUDIO_RECEIVED) == 1
        assert budget.held == 0


TRIM_S = 0.5


async def test_memory_is_given_back_in_a_worker_thread_while_the_loop_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop_thread = threading.get_ident()
    trims: list[int] = []
    full_collections: list[int] = []

    def slow_trim(_pad: int) -> int:
        # As long as malloc_trim takes to walk a large heap.
        trims.append(threading.get_ident())
        time.sleep(TRIM_S)
        return 1

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            full_collections.append(threading.get_ident())

    monkeypatch.setattr(memory, "_malloc_trim", lambda: slow_trim)
    gauge = ConnectionGauge()
    gauge.opened()
    gauge.opened()

    async def the_last_two_close() -> None:
        gauge.closed()
        gauge.closed()
        await gauge.aclose()

    gc.callbacks.append(on_gc)
    try:
        ticks, possible = await ticks_during(the_last_two_close, TICK_S)
    finally:
        gc.callbacks.remove(on_gc)
    assert len(trims) == 1, "memory is given back once, when the count reaches zero"
    assert trims[0] != loop_thread, "malloc_trim ran on the event loop's thread"
    assert trims[0] in full_collections, "the collection did not run in the trim's thread"
    assert ticks >= 0.5 * possible, f"{ticks} of {possible:.0f} possible ticks"
