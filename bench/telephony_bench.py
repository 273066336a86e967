"""Telephony in Gather mode (issue: telephony), with the instant model.

Every request is signed as Twilio signs it and checked by the service
(TWILIO_AUTH_TOKEN set), on one kept-alive connection, one call at a time:
`/twilio/voice` to its TwiML (the greeting: no broker or model before it), and
`/twilio/process-speech` to its TwiML (the utterance published, answered by the
responder, and the reply's `<Say>`). ConversationRelay is not built yet, so its
rows (prompt to first token, simultaneous calls) are not here.
"""

import asyncio
import tempfile
import time
from pathlib import Path

import httpx
from twilio.request_validator import RequestValidator

from bench.report import Section, spread_row
from bench.system_bench import service_env
from tests.support.redis_server import local_redis
from tests.support.services import running

TOKEN = "bench-auth-token"
PUBLIC = "https://voice.bench.test"
VOICE_TARGET_MS = 50.0
SPEECH_TARGET_MS = 250.0


async def timed_posts(
    client: httpx.AsyncClient, validator: RequestValidator, path: str, forms: list[dict[str, str]]
) -> list[float]:
    """Milliseconds for each signed POST of `path` with a form, in turn."""
    took: list[float] = []
    for form in forms:
        signature = validator.compute_signature(PUBLIC + path, form)
        began = time.perf_counter()
        response = await client.post(path, data=form, headers={"X-Twilio-Signature": signature})
        took.append((time.perf_counter() - began) * 1000)
        if response.status_code != 200 or "<Say" not in response.text:
            raise RuntimeError(f"{path} answered {response.status_code}: {response.text[:200]}")
    return took


async def measure(base_url: str, runs: int) -> tuple[list[float], list[float]]:
    validator = RequestValidator(TOKEN)
    calls = [{"CallSid": f"CAbench{n:06d}", "From": "+15550000000"} for n in range(runs)]
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        await timed_posts(client, validator, "/twilio/voice", calls[:3])  # warm-up
        voice = await timed_posts(client, validator, "/twilio/voice", calls)
        speech: list[float] = []
        for call in calls:
            path = f"/twilio/process-speech?session_id=twilio_{call['CallSid']}"
            form = {**call, "SpeechResult": "I am reading about tides", "Confidence": "0.92"}
            speech += await timed_posts(client, validator, path, [form])
    return voice, speech


def run_telephony(quick: bool) -> list[Section]:
    runs = 20 if quick else 200
    with tempfile.TemporaryDirectory(prefix="lva-telephony-bench-") as tmp, local_redis() as redis:
        env = {
            **service_env(redis.url, Path(tmp) / "archive.db"),
            "TWILIO_AUTH_TOKEN": TOKEN,
            "PHONE_HASH_SECRET": "bench-secret",
            "PUBLIC_BASE_URL": PUBLIC,
            "HOST": "127.0.0.1",
        }
        with running(["archiver", "responder", "telephony"], env, Path(tmp)) as services:
            voice, speech = asyncio.run(measure(services["telephony"].base_url, runs))
    rows = [
        spread_row("`/twilio/voice` → TwiML (the greeting)", [ms / 1000 for ms in voice],
                   VOICE_TARGET_MS / 1000, unit="ms", digits=1),
        spread_row("`/twilio/process-speech` → TwiML (the reply)", [ms / 1000 for ms in speech],
                   SPEECH_TARGET_MS / 1000, unit="ms", digits=1),
    ]  # fmt: skip
    notes = [
        "Signed requests (X-Twilio-Signature, checked), one kept-alive connection, one "
        "call at a time; archiver, responder (instant model) and telephony as "
        "processes on a private Redis.",
        "ConversationRelay (prompt → first token, simultaneous calls) is not built yet.",
    ]
    return [Section("telephony", "Telephony, Gather mode", rows, notes)]
