"""The gateway's app in the test's own process, on a real Redis, so that a test can
reach into what the process holds (its reply reader, its audio budget)."""

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI

from services.gateway.main import create_app
from services.gateway.settings import GatewaySettings


@contextlib.asynccontextmanager
async def gateway_in_process(
    redis_url: str, **overrides: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app as `python -m services.gateway` builds it, its lifespan running (the
    broker, the reply reader), and a client of it."""
    settings = GatewaySettings(_env_file=None, redis_url=redis_url, **overrides)
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client,
    ):
        yield app, client
