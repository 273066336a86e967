"""Talking to services started as processes: their settings, REST and WebSocket
clients, health, and what reached the archive."""

import asyncio
import base64
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis
import websockets

from tests.support.services import ServiceProcess
from tests.wire.openai_server import OpenAIWireServer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "audio"


def base_env(redis_url: str, llm: OpenAIWireServer, db: Path) -> dict[str, str]:
    """Every service on `redis_url`; the model (and speech-to-text) is `llm`."""
    return {
        "REDIS_URL": redis_url,
        "LLM_PROVIDER": "openai",
        "LLM_BASE_URL": llm.base_url,
        "LLM_MAX_RETRIES": "0",
        "STT_PROVIDER": "openai",
        "OPENAI_BASE_URL": llm.base_url,
        "OPENAI_API_KEY": "test-key",
        "STT_MAX_RETRIES": "0",
        "DATABASE_URL": f"sqlite:///{db}",
        "REPLY_TIMEOUT": "60",
        "RECLAIM_IDLE_MS": "1500",
        "RECLAIM_INTERVAL_S": "0.5",
    }


def archived(db: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """(session_id, user_text, metadata) of every capture in the archive."""
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT session_id, user_text, metadata FROM captures").fetchall()
    return [(s, u, json.loads(m)) for s, u, m in rows]


async def eventually(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


async def converse(gateway: ServiceProcess, session: str, text: str) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=90) as client:
        response = await client.post(
            "/api/conversation", json={"session_id": session, "text": text}
        )
    assert response.status_code == 200, response.text
    return dict(response.json())


def health(service: ServiceProcess) -> int:
    """The status code of the service's /health (0 if it does not answer)."""
    try:
        return httpx.get(f"{service.base_url}/health", timeout=3.0).status_code
    except httpx.HTTPError:
        return 0


async def all_healthy(services: list[ServiceProcess], timeout: float = 30.0) -> None:
    await eventually(lambda: all(health(s) == 200 for s in services), timeout=timeout)


def ws_url(gateway: ServiceProcess, session: str) -> str:
    return gateway.base_url.replace("http", "ws", 1) + f"/ws/{session}"


def clip_b64(name: str) -> str:
    return base64.b64encode((FIXTURES / name).read_bytes()).decode()


async def ws_ask(ws: Any, message: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send one message and return the next answer (a `response`, or an `error`)."""
    await ws.send(json.dumps(message))
    answer: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return answer


async def ws_session(
    gateway: ServiceProcess, session: str, texts: list[str], timeout: float
) -> list[dict[str, Any]]:
    """One connection saying `texts` one after the other; every answer, in order."""
    async with websockets.connect(ws_url(gateway, session), max_size=None) as ws:
        return [await ws_ask(ws, {"type": "text", "text": t}, timeout) for t in texts]


def everything_in_redis(url: str) -> bytes:
    """Every key name and value in Redis, as one blob to search (values read by
    type: DUMP compresses, and would hide what it holds)."""
    blob = bytearray()
    with redis.Redis.from_url(url) as client:
        for key in client.scan_iter(count=1000):
            blob += key + b"\n"
            kind = client.type(key)
            if kind == b"string":
                blob += client.get(key) or b""
            elif kind == b"stream":
                for entry_id, fields in client.xrange(key):
                    blob += entry_id + b"".join(k + v for k, v in fields.items())
            elif kind == b"hash":
                blob += b"".join(k + v for k, v in client.hgetall(key).items())
            elif kind == b"list":
                blob += b"".join(client.lrange(key, 0, -1))
            elif kind == b"set":
                blob += b"".join(client.smembers(key))
            elif kind == b"zset":
                blob += b"".join(m for m, _ in client.zrange(key, 0, -1, withscores=True))
            else:
                raise AssertionError(f"{key!r} is a {kind!r}: search it too")
            blob += b"\n"
    return bytes(blob)
