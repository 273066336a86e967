"""Providers that fail, on real processes and the real SDKs: a model that refuses
(429), breaks (500), then hangs gets v1's friendly replies, fast once its circuit
is open, and normal replies once it is back; a speech-to-text service the same."""

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from services.responder.prompts import RATE_LIMITED_REPLY, UNAVAILABLE_REPLY
from services.transcriber.audio import SAMPLE_RATE, Clip
from services.transcriber.settings import TranscriberSettings
from services.transcriber.stt import create_stt
from services.transcriber.stt.base import STTCircuitOpenError, STTUnavailableError
from services.transcriber.stt.guarded import guarded
from shared.breaker import STATE
from tests.support.services import ServiceProcess, start_service
from tests.support.stack import base_env, converse
from tests.wire.openai_server import OpenAIWireServer

OPEN_S = 3.0


@pytest.fixture
def stack(
    redis_url: str, echo: OpenAIWireServer, tmp_path: Path
) -> Iterator[dict[str, ServiceProcess]]:
    env = {
        **base_env(redis_url, echo, tmp_path / "archive.db"),
        "LLM_TIMEOUT": "1",
        "BREAKER_FAILURES": "3",
        "BREAKER_OPEN_S": str(OPEN_S),
    }
    services = {
        name: start_service(name, env, tmp_path) for name in ("archiver", "responder", "gateway")
    }
    yield services
    for service in reversed(services.values()):
        service.stop()


def circuit_state(responder: ServiceProcess) -> float:
    text = httpx.get(f"{responder.base_url}/metrics", timeout=5).text
    found = re.search(r'^lva_provider_circuit_state\{provider="openai"\} (\S+)$', text, re.M)
    assert found, "the circuit's state is not exported"
    return float(found.group(1))


async def timed(gateway: ServiceProcess, text: str) -> tuple[str, float]:
    began = time.perf_counter()
    reply = await converse(gateway, "faulty", text)
    return reply["agent_text"], time.perf_counter() - began


async def test_a_failing_model_gets_friendly_replies_fast_once_open_and_recovers(
    stack: dict[str, ServiceProcess], echo: OpenAIWireServer
) -> None:
    gateway, responder = stack["gateway"], stack["responder"]
    assert circuit_state(responder) == 0

    echo.fail_next(429)
    assert (await timed(gateway, "first"))[0] == RATE_LIMITED_REPLY
    echo.fail_next(500)
    assert (await timed(gateway, "second"))[0] == UNAVAILABLE_REPLY
    echo.delay = 10.0  # hangs: the SDK's 1 s timeout gives up on it
    hung, hung_s = await timed(gateway, "third")
    assert hung == UNAVAILABLE_REPLY
    assert 0.9 < hung_s < 5.0
    assert circuit_state(responder) == 2

    # Open: the model is not asked at all, and the learner hears at once.
    asked = len(echo.requests)
    fast, fast_s = await timed(gateway, "fourth")
    assert fast == UNAVAILABLE_REPLY
    assert len(echo.requests) == asked, "the model was called while its circuit was open"
    assert fast_s < hung_s
    print(f"friendly reply: {hung_s:.2f} s on a hung model, {fast_s:.3f} s once open")  # noqa: T201

    # Back: after BREAKER_OPEN_S the next call goes through and closes the circuit.
    echo.delay = 0.0
    await asyncio.sleep(OPEN_S + 0.5)
    answer, _ = await timed(gateway, "fifth")
    assert answer.startswith("You said: fifth")
    assert circuit_state(responder) == 0
    assert "circuit open" in responder.logs()
    assert "answers again: circuit closed" in responder.logs()


def hosted_stt(server: OpenAIWireServer) -> TranscriberSettings:
    return TranscriberSettings(
        _env_file=None,
        stt_provider="openai",
        openai_api_key="sk-test",
        openai_base_url=server.base_url,
        stt_timeout=5.0,
        stt_max_retries=0,
        breaker_failures=2,
        breaker_open_s=0.5,
    )


async def test_a_failing_speech_service_is_not_called_while_its_circuit_is_open(
    echo: OpenAIWireServer,
) -> None:
    stt = guarded(create_stt(hosted_stt(echo)), hosted_stt(echo))
    clip = Clip(
        data=b"RIFF" + bytes(400),
        format="wav",
        duration_s=1.0,
        samples=np.zeros(SAMPLE_RATE, dtype=np.float32),
    )
    await stt.start()
    try:
        echo.fail_next(503, 2)
        for _ in range(2):
            with pytest.raises(STTUnavailableError) as failed:
                await stt.transcribe(clip)
            assert not isinstance(failed.value, STTCircuitOpenError)
        with pytest.raises(STTCircuitOpenError):
            await stt.transcribe(clip)
        assert len(echo.requests) == 2
        assert STATE.labels("openai")._value.get() == 2
        await asyncio.sleep(0.6)
        assert await stt.transcribe(clip) == echo.transcript
        assert STATE.labels("openai")._value.get() == 0
    finally:
        await stt.aclose()
