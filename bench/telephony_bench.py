"""Telephony (issue: telephony), with the instant model.

Gather mode: every request is signed as Twilio signs it and checked by the service
(TWILIO_AUTH_TOKEN set), on one kept-alive connection, one call at a time:
`/twilio/voice` to its TwiML (the greeting: no broker or model before it), and
`/twilio/process-speech` to its TwiML (the utterance published, answered by the
responder, and the reply's `<Say>`).

ConversationRelay mode (a second telephony process, TWILIO_MODE=relay): the time
from a `prompt` to the reply's first `text` token, one call at a time; then
simultaneous calls on that one process, each saying something every
RELAY_TURN_GAP_S (a real caller speaks every several seconds, so this is a
heavier load than as many real calls), and the most it holds with the p95 of
first tokens under 200 ms.
"""

import asyncio
import tempfile
import time
from pathlib import Path

import httpx
from twilio.request_validator import RequestValidator

from bench.report import Row, Section, Spread, fmt, spread_row
from bench.system_bench import service_env
from scripts.relay_call import RelayClient
from tests.support.redis_server import local_redis
from tests.support.services import ServiceProcess, running, start_service

TOKEN = "bench-auth-token"
PUBLIC = "https://voice.bench.test"
VOICE_TARGET_MS = 50.0
SPEECH_TARGET_MS = 250.0
FIRST_TOKEN_TARGET_MS = 200.0
# Simultaneous relay calls tried, in order, until the p95 first token passes the target.
RELAY_LOADS = (1, 10, 25, 50, 100, 200, 300, 400, 600)
RELAY_TURNS = 5
RELAY_TURN_GAP_S = 1.0


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


async def relay_call(
    base_url: str, sid: str, turns: int, gap_s: float, offset_s: float = 0.0
) -> list[float]:
    """Seconds from each prompt of one signed relay call to its first token; the
    call begins `offset_s` late (callers do not all speak in the same instant)."""
    firsts: list[float] = []
    await asyncio.sleep(offset_s)
    async with RelayClient(base_url, sid, token=TOKEN, public_base_url=PUBLIC) as client:
        for turn in range(turns):
            if turn:
                await asyncio.sleep(gap_s)
            spoken, _ = await client.say(f"I am reading about tides, part {turn}")
            if spoken.first_token_s is None or not spoken.text:
                raise RuntimeError(f"no reply on {sid}: {spoken}")
            firsts.append(spoken.first_token_s)
    return firsts


async def measure_relay(
    base_url: str, runs: int, loads: tuple[int, ...]
) -> tuple[list[float], list[tuple[int, Spread]]]:
    ws_url = base_url.replace("http://", "ws://")
    await relay_call(ws_url, "CAwarm", 3, 0.0)
    single = await relay_call(ws_url, "CAsingle", runs, 0.0)
    held: list[tuple[int, Spread]] = []
    for calls in loads:
        results = await asyncio.gather(
            *(
                relay_call(
                    ws_url,
                    f"CAload{calls}x{n}",
                    RELAY_TURNS,
                    RELAY_TURN_GAP_S,
                    RELAY_TURN_GAP_S * n / calls,
                )
                for n in range(calls)
            )
        )
        spread = Spread.of([first for firsts in results for first in firsts])
        held.append((calls, spread))
        if spread.p95 * 1000 > FIRST_TOKEN_TARGET_MS:
            break
    return single, held


def relay_service(env: dict[str, str], tmp: Path) -> ServiceProcess:
    return start_service("telephony", {**env, "TWILIO_MODE": "relay"}, tmp, label="telephony-relay")


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
            relay = relay_service(env, Path(tmp))
            try:
                loads = RELAY_LOADS[:3] if quick else RELAY_LOADS
                single, held = asyncio.run(measure_relay(relay.base_url, runs, loads))
            finally:
                relay.stop()
    rows = [
        spread_row("`/twilio/voice` → TwiML (the greeting)", [ms / 1000 for ms in voice],
                   VOICE_TARGET_MS / 1000, unit="ms", digits=1),
        spread_row("`/twilio/process-speech` → TwiML (the reply)", [ms / 1000 for ms in speech],
                   SPEECH_TARGET_MS / 1000, unit="ms", digits=1),
        spread_row("relay `prompt` → first `text` token, one call", single,
                   FIRST_TOKEN_TARGET_MS / 1000, unit="ms", digits=1),
    ]  # fmt: skip
    for calls, spread in held:
        rows.append(
            Row(
                f"relay, {calls} simultaneous calls: first token median / p95 (n={spread.count})",
                f"{fmt(spread.median * 1000, ' ms', 1)} / {fmt(spread.p95 * 1000, ' ms', 1)}",
                f"p95 < {FIRST_TOKEN_TARGET_MS:g} ms",
                spread.p95 * 1000 < FIRST_TOKEN_TARGET_MS,
            )
        )
    within = [calls for calls, spread in held if spread.p95 * 1000 < FIRST_TOKEN_TARGET_MS]
    rows.append(
        Row(
            "relay calls one telephony process holds with p95 first token < 200 ms",
            f"≥ {max(within)}" if within else "none",
            "",
            None,
        )
    )
    notes = [
        "Signed requests (X-Twilio-Signature, checked), one kept-alive connection, one "
        "call at a time; archiver, responder (instant model) and telephony as "
        "processes on a private Redis.",
        f"Relay: a second telephony process in relay mode, signed handshakes; each "
        f"simultaneous call says {RELAY_TURNS} things, {RELAY_TURN_GAP_S:g} s apart, "
        "the calls' starts spread over that gap; "
        'loads are tried in turn until the p95 passes the target ("≥": the largest '
        "load tried that stayed under it).",
    ]
    return [Section("telephony", "Telephony: Gather and ConversationRelay", rows, notes)]
