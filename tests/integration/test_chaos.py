"""Faults one after another under a steady load, on real processes and a real Redis
(AOF on): a restart of Redis, a flush of it, then `kill -9` of each worker type in
turn, and a rolling restart (SIGTERM) of every worker. Afterwards every message
sent has exactly one answer (a reply, or a clear error) and every answered
utterance exactly one row in the archive.

The model and speech-to-text are the OpenAI wire server, echoing, slowed to
0.15 s a call so that every worker always holds messages when it is killed.
"""

import asyncio
import signal
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.load import Load
from tests.support.redis_server import RedisServer, restartable_redis
from tests.support.services import ServiceProcess, start_service
from tests.support.stack import all_healthy, base_env, converse, eventually
from tests.wire.openai_server import OpenAIWireServer

REPLY_TIMEOUT_S = 10.0
# Errors a learner may get while things break: Redis away, or a message that a
# flush took with it (a clip, whose bytes went too) and that nobody could answer.
CLEAR_ERRORS = {"error unavailable", "error timeout"}
WORKERS = ("archiver", "transcriber", "responder-a", "responder-b")


@pytest.fixture
def slow_echo(echo: OpenAIWireServer) -> Iterator[OpenAIWireServer]:
    echo.delay = 0.15
    yield echo
    echo.delay = 0.0


class Stack:
    """Every service on one Redis, each startable again under the same name."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env = env
        self.tmp = tmp
        self.services: dict[str, ServiceProcess] = {}

    def start(self, label: str) -> ServiceProcess:
        name = label.split("-")[0]
        self.services[label] = start_service(name, self.env, self.tmp, label=label)
        return self.services[label]

    def stop_all(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()


def rows_by_text(db: Path) -> Counter[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT session_id, user_text FROM captures").fetchall()
    return Counter((session, text) for session, text in rows)


def check_exactly_once(load: Load, db: Path, transcript: str) -> Counter[str]:
    counts = Counter(sent.outcome for sent in load.sent)
    print(f"outcomes of {len(load.sent)} messages: {dict(counts)}")  # noqa: T201 - the counts
    assert not load.extra, f"answers nobody asked for: {load.extra[:3]}"
    assert set(counts) <= {"answered", *CLEAR_ERRORS}, counts
    rows = rows_by_text(db)
    for sent in load.sent:
        if sent.kind == "text":
            stored = rows[(sent.session, sent.text)]
            assert stored == 1 if sent.outcome == "answered" else stored <= 1, (sent, stored)
    # Every clip is heard as the same words: count them per session.
    for session in {sent.session for sent in load.sent}:
        clips = [s for s in load.sent if s.session == session and s.kind == "audio"]
        answered = sum(s.outcome == "answered" for s in clips)
        assert answered <= rows[(session, transcript)] <= len(clips), session
    return counts


def settled(db: Path, load: Load) -> bool:
    """Every answered typed message is archived (the archiver may lag the replies)."""
    rows = rows_by_text(db)
    return all(
        rows[(s.session, s.text)] >= 1
        for s in load.sent
        if s.kind == "text" and s.outcome == "answered"
    )


@pytest.fixture
def env(slow_echo: OpenAIWireServer, tmp_path: Path) -> dict[str, str]:
    return {
        **base_env("", slow_echo, tmp_path / "archive.db"),
        "REPLY_TIMEOUT": str(REPLY_TIMEOUT_S),
        "SUPERVISE_INTERVAL_S": "0.5",
        "RECLAIM_IDLE_MS": "2000",
        "RECLAIM_INTERVAL_S": "0.5",
    }


def kill(service: ServiceProcess) -> None:
    service.proc.send_signal(signal.SIGKILL)
    service.proc.wait(10)


async def test_redis_restart_flush_and_killed_workers_under_load_answer_each_message_once(
    env: dict[str, str], slow_echo: OpenAIWireServer, tmp_path: Path
) -> None:
    db = tmp_path / "archive.db"
    with restartable_redis(appendonly=True) as redis_server:
        stack = Stack({**env, "REDIS_URL": redis_server.url}, tmp_path)
        try:
            for label in (*WORKERS, "gateway"):
                stack.start(label)
            load = Load(
                stack.services["gateway"],
                sessions=12,
                pause_s=0.05,
                answer_timeout=REPLY_TIMEOUT_S + 5,
                audio_every=4,
                transcript=slow_echo.transcript,
            )
            load.start()
            await asyncio.sleep(2.0)

            redis_server.stop()  # a restart: AOF keeps what was acknowledged
            await asyncio.sleep(1.0)
            redis_server.start()
            await asyncio.sleep(3.0)

            redis_server.server().flush()  # everything in Redis gone at once
            await asyncio.sleep(4.0)

            for label in ("responder-a", "transcriber", "archiver"):
                kill(stack.services[label])
                # responder-b goes on alone for a while; the others come back.
                stack.start(label)
                await asyncio.sleep(3.0)

            await load.stop()
            await eventually(lambda: settled(db, load), 30)
            counts = check_exactly_once(load, db, slow_echo.transcript)
            assert counts["answered"] > len(load.sent) * 0.7, counts
            await all_healthy(list(stack.services.values()))
        finally:
            stack.stop_all()


async def test_what_no_worker_had_read_when_redis_was_flushed_is_published_again(
    env: dict[str, str], echo: OpenAIWireServer, redis_url: str, tmp_path: Path
) -> None:
    """Exchanges wait for a stopped archiver, and utterances for a busy responder,
    when everything in Redis is deleted: their publishers (the responder, the
    gateway) still hold them, and publish them again."""
    db = tmp_path / "archive.db"
    env = {**env, "REDIS_URL": redis_url, "REPLY_TIMEOUT": "30", "RESPONDER_CONCURRENCY": "1"}
    stack = Stack(env, tmp_path)
    try:
        for label in ("archiver", "responder", "gateway"):
            stack.start(label)
        gateway = stack.services["gateway"]
        stack.services["archiver"].stop()
        for n in range(3):
            await converse(gateway, "flushed", f"answered before the flush {n}")
        # One message at a time, a second each: two of three wait in the stream.
        echo.delay = 1.0
        asking = [
            asyncio.create_task(converse(gateway, f"flushed-{n}", f"waiting at the flush {n}"))
            for n in range(3)
        ]
        await asyncio.sleep(0.5)
        RedisServer(redis_url).flush()
        stack.start("archiver")
        replies = await asyncio.wait_for(asyncio.gather(*asking), 30)
        assert [r["user_text"] for r in replies] == [f"waiting at the flush {n}" for n in range(3)]
        expected = {f"answered before the flush {n}" for n in range(3)}
        expected |= {f"waiting at the flush {n}" for n in range(3)}
        await eventually(lambda: {t for _, t in rows_by_text(db)} == expected, 20)
        await asyncio.sleep(1.0)
        assert all(n == 1 for n in rows_by_text(db).values()), rows_by_text(db)
        for label in ("gateway", "responder"):
            assert "published again" in stack.services[label].logs(), label
    finally:
        echo.delay = 0.0
        stack.stop_all()


async def test_a_rolling_restart_under_load_loses_nothing_and_answers_nothing_twice(
    env: dict[str, str], slow_echo: OpenAIWireServer, redis_url: str, tmp_path: Path
) -> None:
    db = tmp_path / "archive.db"
    stack = Stack({**env, "REDIS_URL": redis_url}, tmp_path)
    try:
        for label in (*WORKERS, "gateway"):
            stack.start(label)
        load = Load(
            stack.services["gateway"],
            sessions=8,
            pause_s=0.05,
            answer_timeout=REPLY_TIMEOUT_S + 5,
            prefix="rolling",
            audio_every=4,
            transcript=slow_echo.transcript,
        )
        load.start()
        await asyncio.sleep(1.5)
        for label in WORKERS:
            stopping = stack.services[label]
            stopping.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(stopping.proc.wait, 30)
            # uvicorn raises the signal again once it has shut down gracefully.
            assert code in (0, -signal.SIGTERM), f"{label} exited with {code}"
            assert "Application shutdown complete" in stopping.logs(), label
            stack.start(label)
            await asyncio.sleep(1.0)
        await load.stop()
        await eventually(lambda: settled(db, load), 30)
        counts = check_exactly_once(load, db, slow_echo.transcript)
        # Nothing is lost: while the transcriber restarts its clips wait in Redis.
        assert counts == Counter({"answered": len(load.sent)}), counts
    finally:
        stack.stop_all()
