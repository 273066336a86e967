"""The voice path with the embedded models (issue: transcriber).

1. Transcription of a 5-second clip by the embedded faster-whisper tiny.en, in
   this process: decoding and validation (`load_clip`) plus the model, ≥ 20 runs.
2. The whole voice exchange: a clip sent over the WebSocket, the gateway, the
   transcriber, the responder with the embedded SmolLM2, the reply text back;
   every service a real process on a private Redis, ≥ 20 sequential exchanges.
"""

import asyncio
import base64
import json
import tempfile
import time
from pathlib import Path

import websockets

from bench.report import Row, Section, Spread, fmt
from services.transcriber.audio import load_clip
from services.transcriber.settings import TranscriberSettings
from services.transcriber.stt.local_whisper import LocalWhisperSTT
from tests.support.redis_server import local_redis
from tests.support.services import running

CLIPS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "audio"
CLIP = "bench_5s.webm"
TRANSCRIBE_TARGET_S = 1.2
EXCHANGE_TARGET_S = 2.0


async def time_transcription(runs: int) -> tuple[Spread, Spread]:
    settings = TranscriberSettings(_env_file=None, stt_provider="local")
    stt = LocalWhisperSTT(settings)
    await stt.start()
    data = (CLIPS / CLIP).read_bytes()
    whole: list[float] = []
    model: list[float] = []
    try:
        for _ in range(runs):
            start = time.perf_counter()
            clip = await asyncio.to_thread(
                load_clip, data, max_bytes=settings.max_audio_bytes, max_duration_s=60
            )
            decoded = time.perf_counter()
            await stt.transcribe(clip)
            done = time.perf_counter()
            whole.append(done - start)
            model.append(done - decoded)
    finally:
        await stt.aclose()
    return Spread.of(whole), Spread.of(model)


async def time_exchanges(ws_url: str, runs: int) -> list[float]:
    audio = base64.b64encode((CLIPS / CLIP).read_bytes()).decode()
    message = json.dumps({"type": "audio", "audio": audio})
    times: list[float] = []
    async with websockets.connect(ws_url) as ws:
        for _ in range(runs + 1):
            start = time.perf_counter()
            await ws.send(message)
            reply = json.loads(await ws.recv())
            if reply.get("type") != "response":
                raise RuntimeError(f"voice exchange failed: {reply}")
            times.append(time.perf_counter() - start)
    # The first exchange of a session pays one-off costs (connections, caches).
    return times[1:]


def whole_exchange(runs: int) -> Spread:
    with tempfile.TemporaryDirectory(prefix="lva-voice-bench-") as tmp, local_redis() as redis:
        env = {
            "REDIS_URL": redis.url,
            "LLM_PROVIDER": "local",
            "STT_PROVIDER": "local",
            "DATABASE_URL": f"sqlite:///{Path(tmp) / 'archive.db'}",
            "REPLY_TIMEOUT": "60",
            "LOG_LEVEL": "WARNING",
        }
        names = ["archiver", "responder", "transcriber", "gateway"]
        with running(names, env, Path(tmp)) as services:
            url = services["gateway"].base_url.replace("http://", "ws://", 1) + "/ws/voice-bench"
            return Spread.of(asyncio.run(time_exchanges(url, runs)))


def run_voice(quick: bool) -> list[Section]:
    runs = 5 if quick else 25
    whole, model = asyncio.run(time_transcription(runs))
    exchange = whole_exchange(runs)
    rows = [
        Row(
            f"transcription of a 5 s clip, decode + model (n={whole.count}), median / p95",
            f"{fmt(whole.median, ' s')} / {fmt(whole.p95, ' s')}",
            f"median ≤ {TRANSCRIBE_TARGET_S} s",
            whole.median <= TRANSCRIBE_TARGET_S,
        ),
        Row(
            "of which the model alone, median / p95",
            f"{fmt(model.median, ' s')} / {fmt(model.p95, ' s')}",
        ),
        Row(
            f"whole voice exchange, clip in → reply text out (n={exchange.count}), median / p95",
            f"{fmt(exchange.median, ' s')} / {fmt(exchange.p95, ' s')}",
            f"median ≤ {EXCHANGE_TARGET_S} s",
            exchange.median <= EXCHANGE_TARGET_S,
        ),
    ]
    notes = [
        f"Clip: tests/fixtures/audio/{CLIP} (5.0 s, Opus in WebM as a browser records it).",
        "Embedded models: faster-whisper tiny.en int8, greedy, no timestamps, "
        "1 thread; SmolLM2-135M-Instruct Q4_1 through llama.cpp, 1 thread, "
        "at most 150 tokens.",
        "The exchange runs every service as a process on this 2-core machine; "
        "transcription and generation run one after the other for each clip.",
    ]
    return [Section("voice", "Voice path with the embedded models", rows, notes)]
