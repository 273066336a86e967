"""Dead letters on real Redis with real processes: the asker hears at once, operators
see the counts, and `scripts.dead_letters` lists, replays and drops them."""

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import httpx
import pytest
import redis
import redis.asyncio
import websockets

from shared import dead_letters
from shared.streams import DEAD_LETTERS, UTTERANCE_RECEIVED, Keys
from tests.support.services import ROOT, ServiceProcess, start_service
from tests.support.stack import archived, base_env, eventually, ws_url
from tests.wire.openai_server import OpenAIWireServer

POISON = "poison"


@pytest.fixture
def stack(
    redis_url: str, llm: OpenAIWireServer, tmp_path: Path
) -> Iterator[dict[str, ServiceProcess]]:
    env = {
        **base_env(redis_url, llm, tmp_path / "archive.db"),
        "MAX_DELIVERIES": "2",
        "RECLAIM_IDLE_MS": "1000",
        "RECLAIM_INTERVAL_S": "0.2",
    }
    services = {
        name: start_service(name, env, tmp_path) for name in ("archiver", "responder", "gateway")
    }
    yield services
    for service in reversed(services.values()):
        service.stop()


def operator(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scripts.dead_letters", *args],
        cwd=ROOT,
        env={"REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_poison_message_is_dead_lettered_its_asker_told_and_it_can_be_replayed(
    stack: dict[str, ServiceProcess], redis_url: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    # The session's context is no JSON: every delivery to the responder fails.
    client.set(Keys.context(POISON), "{not json")
    gateway = stack["gateway"]
    async with websockets.connect(ws_url(gateway, POISON)) as ws:
        await ws.send(json.dumps({"type": "text", "text": "a thought nobody can answer"}))
        answer = json.loads(await asyncio.wait_for(ws.recv(), 30))
        heard_at = time.time()
    assert answer["type"] == "error"
    assert answer["code"] == "dead_letter"
    assert "2 attempts" in answer["message"]

    ((entry_id, fields),) = cast(
        list[tuple[bytes, dict[bytes, bytes]]], client.xrange(DEAD_LETTERS)
    )
    letter = dead_letters.read(entry_id, fields)
    assert (letter.stream, letter.failures) == (UTTERANCE_RECEIVED, 2)
    assert letter.dead_at is not None
    told_after = heard_at - letter.dead_at
    assert told_after < 1.0, f"the asker heard {told_after:.2f} s after the dead-lettering"

    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http:
        stats = (await http.get("/api/stats")).json()
        assert stats["dead_letters"] == {UTTERANCE_RECEIVED: 1}

        async def exported() -> str:
            return (await http.get(f"{stack['responder'].base_url}/metrics")).text

        line = f'lva_dead_letters{{stream="{UTTERANCE_RECEIVED}"}} 1.0'
        deadline = time.monotonic() + 20
        while line not in await exported():
            assert time.monotonic() < deadline, "the dead-letter gauge was never exported"
            await asyncio.sleep(0.5)

    listed = operator(redis_url, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (shown,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert shown["id"] == letter.id
    assert "a thought nobody can answer" in shown["body"]
    assert shown["request_id"] == letter.request_id

    # Fixed, then replayed: the responder takes the same message again, and the
    # archive keeps what the learner said.
    client.delete(Keys.context(POISON))
    replayed = operator(redis_url, "replay", "--all")
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout.splitlines()[-1]) == {
        "replayed": [letter.id],
        "not_found": [],
    }
    db = tmp_path / "archive.db"
    await eventually(lambda: [u for s, u, _ in archived(db) if s == POISON] != [])
    assert [u for s, u, _ in archived(db) if s == POISON] == ["a thought nobody can answer"]
    assert client.xlen(DEAD_LETTERS) == 0
    async with redis.asyncio.Redis.from_url(redis_url) as aclient:
        assert await dead_letters.counts(aclient) == {}
    client.close()


async def test_dropping_dead_letters_and_naming_ones_that_do_not_exist(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        for n in range(3):
            async with client.pipeline(transaction=True) as pipe:
                dead_letters.bury(
                    pipe,
                    {b"__data__": b"not a FastStream message"},
                    stream="work" if n < 2 else "other",
                    group="workers",
                    entry_id=f"{n + 1}-0".encode(),
                    failures=5,
                )
                await pipe.execute()
        assert await dead_letters.counts(client) == {"other": 1, "work": 2}
        (unreadable,) = await dead_letters.listing(client, stream="other")
        # Unreadable as a message: shown as what it holds, nobody to tell.
        assert unreadable.request_id is None and unreadable.failures == 5

        listed = operator(redis_url, "list")
        assert listed.returncode == 0, listed.stderr
        assert "dead letters per stream: other: 1, work: 2" in listed.stdout

        dropped = operator(redis_url, "drop", "--all", "--stream", "work")
        assert dropped.returncode == 0, dropped.stderr
        assert len(json.loads(dropped.stdout)["dropped"]) == 2
        assert await dead_letters.counts(client) == {"other": 1}

        missing = operator(redis_url, "drop", "1-1")
        assert missing.returncode == 1
        assert json.loads(missing.stdout) == {"dropped": [], "not_found": ["1-1"]}
        refused = operator(redis_url, "replay")
        assert refused.returncode == 2
        assert "--all" in refused.stderr
    finally:
        await client.aclose()
