"""One stack for all end-to-end tests: Redis, the four services as processes, the
embedded models that `make run` uses (faster-whisper tiny.en, SmolLM2)."""

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.support.redis_server import local_redis
from tests.support.services import ServiceProcess, running

STACK = ["archiver", "responder", "transcriber", "gateway"]


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServiceProcess]]:
    tmp = tmp_path_factory.mktemp("e2e")
    with local_redis() as redis:
        env = {
            "REDIS_URL": redis.url,
            "LLM_PROVIDER": "local",
            "STT_PROVIDER": "local",
            "DATABASE_URL": f"sqlite:///{tmp / 'archive.db'}",
            "REPLY_TIMEOUT": "90",
        }
        with running(STACK, env, tmp) as services:
            yield services


@pytest.fixture
async def api(stack: dict[str, ServiceProcess]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack["gateway"].base_url, timeout=120) as client:
        yield client


def ws_url(stack: dict[str, ServiceProcess], session: str) -> str:
    return stack["gateway"].base_url.replace("http", "ws", 1) + f"/ws/{session}"
