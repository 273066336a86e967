"""`make run`'s process handling: a service that exits by itself is started again, and
Ctrl-C stops everything without a restart."""

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped]  # no stubs in the venv
import pytest

from tests.support.redis_server import free_port
from tests.support.services import ROOT
from tests.wire.openai_server import OpenAIWireServer

CHILD = textwrap.dedent(
    """
    import pathlib, signal, sys, time
    runs = pathlib.Path(sys.argv[1])
    n = int(runs.read_text() or 0) + 1 if runs.exists() else 1
    runs.write_text(str(n))
    if n == 1:
        sys.exit(3)  # the first run fails at once
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(0.1)
    """
)


def wait_for(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def test_keep_running_restarts_a_failed_command_and_stops_on_sigterm(tmp_path: Path) -> None:
    child, runs = tmp_path / "child.py", tmp_path / "runs"
    child.write_text(CHILD)
    wrapper = subprocess.Popen(
        [sys.executable, "-m", "scripts.keep_running", "--", sys.executable, str(child), str(runs)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: runs.exists() and runs.read_text() == "2", timeout=15)
        wrapper.send_signal(signal.SIGTERM)
        assert wrapper.wait(15) == 0
        output = wrapper.stdout.read().decode() if wrapper.stdout else ""
        assert "exited with status 3; starting it again in 1 s" in output
        time.sleep(1.5)
        assert runs.read_text() == "2", "a command stopped on purpose was started again"
    finally:
        if wrapper.poll() is None:
            wrapper.kill()


def health(port: int) -> dict[str, object] | None:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    except httpx.HTTPError:
        return None
    return dict(response.json()) if response.status_code == 200 else None


@pytest.fixture
def llm() -> Iterator[OpenAIWireServer]:
    with OpenAIWireServer() as server:
        server.echo = True
        yield server


def test_make_run_brings_a_killed_worker_back(
    redis_url: str, llm: OpenAIWireServer, tmp_path: Path
) -> None:
    names = ("gateway", "responder", "archiver", "transcriber", "telephony")
    ports = {name: free_port() for name in names}
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "PORT": str(ports["gateway"]),
        "RESPONDER_HEALTH_PORT": str(ports["responder"]),
        "ARCHIVER_HEALTH_PORT": str(ports["archiver"]),
        "TRANSCRIBER_HEALTH_PORT": str(ports["transcriber"]),
        "TELEPHONY_PORT": str(ports["telephony"]),
        "HOST": "127.0.0.1",
        "LLM_PROVIDER": "openai",
        "LLM_BASE_URL": llm.base_url,
        "STT_PROVIDER": "openai",
        "OPENAI_BASE_URL": llm.base_url,
        "OPENAI_API_KEY": "test-key",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'archive.db'}",
    }
    log = (tmp_path / "run.log").open("wb")
    run = subprocess.Popen(
        [sys.executable, "scripts/run.py"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: all(health(p) for p in ports.values()), timeout=120)
        before = health(ports["responder"])
        assert before is not None
        # The instance id is <host>-<pid>-<random>: the pid of the responder itself.
        pid = int(str(before["instance"]).split("-")[-2])
        os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda: (
                (h := health(ports["responder"])) is not None
                and h["instance"] != before["instance"]
            ),
            timeout=60,
        )
        # The others never stopped, and the system answers again.
        response = httpx.post(
            f"http://127.0.0.1:{ports['gateway']}/api/conversation",
            json={"session_id": "revived", "text": "still there?"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert "still there?" in response.json()["agent_text"]
        children = psutil.Process(run.pid).children(recursive=True)
        run.send_signal(signal.SIGINT)
        assert run.wait(60) in (0, 130, -signal.SIGINT)
        _, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, f"left behind: {alive}"
        text = (tmp_path / "run.log").read_text(errors="replace")
        assert "starting it again" in text
    finally:
        log.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
