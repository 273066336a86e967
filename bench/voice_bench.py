"""The voice path with the embedded models (issues: transcriber, streaming).

1. Transcription of a 5-second clip by the embedded faster-whisper tiny.en, in
   this process: decoding and validation (`load_clip`) plus the model, ≥ 20 runs.
2. The whole voice exchange, streamed (`?stream=1`): a clip sent over the
   WebSocket, the gateway, the transcriber, the responder with the embedded
   SmolLM2; the time to what was heard (`transcript`), to the companion's first
   words (the first `delta`) and to the whole reply (`response`); every service a
   real process on a private Redis, ≥ 20 sequential exchanges.
3. Typed text on the same stack: the time to the first `delta`.
"""

import asyncio
import base64
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

from bench.report import Row, Section, Spread, fmt, spread_row
from services.transcriber.audio import load_clip
from services.transcriber.settings import TranscriberSettings
from services.transcriber.stt.local_whisper import LocalWhisperSTT
from tests.support.redis_server import local_redis
from tests.support.services import running

CLIPS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "audio"
CLIP = "bench_5s.webm"
TRANSCRIBE_TARGET_S = 1.2
EXCHANGE_TARGET_S = 2.0
FIRST_DELTA_TARGET_S = 1.0
TYPED_TARGET_S = 0.25
TEXT = "I read that the tides follow the moon, and I want to know why"


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


@dataclass
class Streamed:
    """Seconds from sending a message to each part of its streamed answer."""

    transcript: list[float] = field(default_factory=list)
    first_delta: list[float] = field(default_factory=list)
    response: list[float] = field(default_factory=list)


async def time_streamed(ws: ClientConnection, message: str, runs: int) -> Streamed:
    times = Streamed()
    # One more than measured: a session's first exchange pays one-off costs.
    for n in range(runs + 1):
        start = time.perf_counter()
        await ws.send(message)
        heard = first = None
        while True:
            reply = json.loads(await ws.recv())
            at = time.perf_counter() - start
            if reply["type"] == "transcript" and heard is None:
                heard = at
            elif reply["type"] == "delta" and first is None:
                first = at
            elif reply["type"] == "response":
                break
            elif reply["type"] == "error":
                raise RuntimeError(f"streamed exchange failed: {reply}")
        if n == 0:
            continue
        if heard is not None:
            times.transcript.append(heard)
        if first is not None:
            times.first_delta.append(first)
        times.response.append(at)
    return times


async def time_exchanges(ws_url: str, runs: int) -> tuple[Streamed, Streamed]:
    audio = base64.b64encode((CLIPS / CLIP).read_bytes()).decode()
    clip = json.dumps({"type": "audio", "audio": audio})
    text = json.dumps({"type": "text", "text": TEXT})
    async with connect(ws_url + "?stream=1", max_size=None) as ws:
        voice = await time_streamed(ws, clip, runs)
        typed = await time_streamed(ws, text, runs)
    return voice, typed


def whole_exchange(runs: int) -> tuple[Streamed, Streamed]:
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
            return asyncio.run(time_exchanges(url, runs))


def run_voice(quick: bool) -> list[Section]:
    runs = 5 if quick else 25
    whole, model = asyncio.run(time_transcription(runs))
    voice, typed = whole_exchange(runs)
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
        spread_row("clip sent → `transcript` (what was heard)", voice.transcript),
        spread_row("clip sent → first `delta` (the first words)", voice.first_delta,
                   FIRST_DELTA_TARGET_S),
        spread_row("clip sent → `response` (the whole reply)", voice.response,
                   EXCHANGE_TARGET_S),
        spread_row("typed text sent → first `delta`", typed.first_delta, TYPED_TARGET_S),
        spread_row("typed text sent → `response`", typed.response),
    ]  # fmt: skip
    notes = [
        f"Clip: tests/fixtures/audio/{CLIP} (5.0 s, Opus in WebM as a browser records it).",
        "Embedded models: faster-whisper tiny.en int8, greedy, no timestamps, "
        "1 thread; SmolLM2-135M-Instruct Q4_1 through llama.cpp, 1 thread, "
        "at most 150 tokens.",
        "The exchange runs every service as a process on this 2-core machine; "
        "transcription and generation run one after the other for each clip.",
        f"Typed text: {TEXT!r}, on the same connection, after the clips.",
    ]
    return [Section("voice", "Voice path with the embedded models", rows, notes)]
