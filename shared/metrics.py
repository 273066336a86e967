"""Prometheus metrics every service exports on `/metrics`.

- FastStream's Prometheus middleware on every broker: messages received,
  processed (with their duration and exceptions) and published, per stream.
- The gateway's and telephony's HTTP requests (prometheus-fastapi-instrumentator)
  and WebSocket connections and messages (counted here: the instrumentator does
  not see WebSockets).
- The figures voice agents are judged by, observed where a learner waits: time
  to the first piece of a reply and to the whole reply, and, from the reply's
  `timings`, the transcription, the model's first token and the whole model call;
  at the responder, the tokens of each model call, as its provider reports them.
- For every consumer group of the pipeline, its pending entries and lag (XINFO
  GROUPS), and the dead letters of each stream, from every service, so a worker
  that stopped still shows its backlog (take the max over instances).
- Learners' requests the gateway or telephony refused before publishing them,
  because the workers were too far behind (`shared.backlog`), and requests and
  WebSocket connections refused for their credential (AUTH_MODE=token).
"""

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from shared import dead_letters
from shared.events import Timings
from shared.streams import (
    ARCHIVE_QUERIES,
    AUDIO_RECEIVED,
    CALL_EVENTS,
    EXCHANGE_COMPLETED,
    SESSION_END_REQUESTED,
    UTTERANCE_RECEIVED,
)

log = logging.getLogger(__name__)

# Seconds; voice latencies live between tens of milliseconds and a few seconds.
_LATENCY = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 30.0)
# The streams whose groups are watched.
PIPELINE = (
    AUDIO_RECEIVED,
    UTTERANCE_RECEIVED,
    SESSION_END_REQUESTED,
    EXCHANGE_COMPLETED,
    ARCHIVE_QUERIES,
    CALL_EVENTS,
)
GROUPS_EVERY_S = 5.0
# Where lag must be counted entry by entry, it is counted up to this many.
LAG_COUNT_CAP = 10_000
# Every stream a dead-letter count was exported for.
_dead_letter_streams: set[str] = set()

FIRST_PIECE = Histogram(
    "lva_reply_first_piece_seconds",
    "From the learner's message to the first piece of its reply (streaming askers)",
    ["source"],
    buckets=_LATENCY,
)
REPLY = Histogram(
    "lva_reply_seconds",
    "From the learner's message to its whole reply",
    ["source", "input"],
    buckets=_LATENCY,
)
TRANSCRIPTION = Histogram(
    "lva_transcription_seconds",
    "Speech-to-text of one clip, as the reply's timings say",
    ["source"],
    buckets=_LATENCY,
)
MODEL_FIRST_TOKEN = Histogram(
    "lva_model_first_token_seconds",
    "From the model call's start to its first token",
    ["source"],
    buckets=_LATENCY,
)
MODEL = Histogram(
    "lva_model_seconds",
    "The whole language-model call of one reply",
    ["source"],
    buckets=_LATENCY,
)
MODEL_TOKENS = Histogram(
    "lva_model_tokens",
    "Tokens of one model call, as its provider reports them (input includes the context)",
    ["provider", "direction"],
    buckets=(8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384),
)
REPLIES = Counter("lva_replies_total", "Replies to learners, by outcome", ["source", "outcome"])
WS_CONNECTIONS = Gauge("lva_websocket_connections", "Open WebSocket connections", ["endpoint"])
WS_MESSAGES = Counter(
    "lva_websocket_messages_total",
    "WebSocket messages, by direction and type",
    ["endpoint", "direction", "type"],
)
GROUP_PENDING = Gauge(
    "lva_group_pending_messages",
    "Entries delivered to a consumer group and not yet acknowledged",
    ["stream", "group"],
)
GROUP_LAG = Gauge(
    "lva_group_lag_messages",
    "Entries of the stream not yet delivered to the group (XINFO GROUPS lag)",
    ["stream", "group"],
)
DEAD_LETTERS = Gauge(
    "lva_dead_letters",
    "Messages waiting in dead.letters, by the stream they came from",
    ["stream"],
)
REQUESTS_REFUSED = Counter(
    "lva_requests_refused_total",
    "Learners' requests refused before they were published, by reason (backlog: "
    "MAX_BACKLOG; session_taken: another learner's session)",
    ["source", "reason"],
)
AUTH_REFUSED = Counter(
    "lva_auth_refused_total",
    "Requests (http) and WebSocket connections (ws) refused for their credential, by code",
    ["transport", "code"],
)


def observe_reply(source: str, input_kind: str, seconds: float, timings: Timings) -> None:
    REPLY.labels(source, input_kind).observe(seconds)
    if timings.transcribe is not None:
        TRANSCRIPTION.labels(source).observe(timings.transcribe / 1000)
    if timings.first_token is not None:
        MODEL_FIRST_TOKEN.labels(source).observe(timings.first_token / 1000)
    if timings.generate is not None:
        MODEL.labels(source).observe(timings.generate / 1000)


def broker_middleware(service: str) -> Any:
    from faststream.redis.prometheus import RedisPrometheusMiddleware

    return RedisPrometheusMiddleware(registry=REGISTRY, app_name=service)


def asgi_app() -> Any:
    """The `/metrics` endpoint, as an ASGI app."""
    from prometheus_client import make_asgi_app

    return make_asgi_app(registry=REGISTRY)


def instrument_http(app: Any) -> None:
    """Request counts and durations of a FastAPI app, and its `/metrics`."""
    from prometheus_fastapi_instrumentator import Instrumentator

    Instrumentator(
        excluded_handlers=["/metrics", "/health", "/assets/.*"],
        should_group_status_codes=False,
    ).instrument(app).expose(app, include_in_schema=False)


async def read_groups(redis: Redis) -> None:
    """Set the pending and lag gauges of every group of the pipeline's streams."""
    for stream in PIPELINE:
        try:
            groups = await redis.xinfo_groups(stream)
        except ResponseError:
            continue  # no such stream yet
        for group in groups:
            name = group["name"]
            name = name.decode() if isinstance(name, bytes) else str(name)
            GROUP_PENDING.labels(stream, name).set(int(group["pending"]))
            GROUP_LAG.labels(stream, name).set(await group_lag(redis, stream, group))
    waiting = await dead_letters.counts(redis)
    # Streams whose dead letters were all replayed or dropped read 0, not their last count.
    for stream in set(waiting) | set(_dead_letter_streams):
        DEAD_LETTERS.labels(stream).set(waiting.get(stream, 0))
    _dead_letter_streams.update(waiting)


async def group_lag(redis: Redis, stream: str, group: Mapping[str, Any]) -> int:
    """Entries of `stream` not yet delivered to a group, from its XINFO GROUPS entry
    (counted up to LAG_COUNT_CAP where Redis does not say)."""
    lag = group.get("lag")
    if lag is None:
        # Redis before 7 has no `lag` (and 7 none when entries were deleted
        # mid-stream): count what lies past the last delivered entry.
        return await _undelivered(redis, stream, group["last-delivered-id"])
    return int(lag)


async def _undelivered(redis: Redis, stream: str, last_delivered: bytes | str) -> int:
    last = last_delivered.decode() if isinstance(last_delivered, bytes) else last_delivered
    entries = await redis.xrange(stream, min=f"({last}", max="+", count=LAG_COUNT_CAP)
    return len(entries or [])


async def watch_groups(redis: Redis) -> None:
    """`read_groups` every few seconds, until cancelled."""
    while True:
        try:
            await read_groups(redis)
        except (RedisError, OSError) as exc:
            log.debug("consumer group metrics not read: %s", exc)
        await asyncio.sleep(GROUPS_EVERY_S)
