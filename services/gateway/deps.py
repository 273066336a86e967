"""FastAPI dependencies of the gateway, as `Annotated` aliases."""

from typing import Annotated, cast

from fastapi import Depends, Request
from redis.asyncio import Redis

from services.gateway.auth import Authenticator
from services.gateway.backend import Backend
from services.gateway.intake import AudioBudget
from services.gateway.settings import GatewaySettings
from services.gateway.tokens import Caller


def get_settings(request: Request) -> GatewaySettings:
    return cast(GatewaySettings, request.app.state.settings)


def get_backend(request: Request) -> Backend:
    return cast(Backend, request.app.state.backend)


def get_redis(request: Request) -> Redis:
    return cast(Redis, request.app.state.redis)


def get_audio_budget(request: Request) -> AudioBudget:
    return cast(AudioBudget, request.app.state.audio_budget)


def get_authenticator(request: Request) -> Authenticator:
    return cast(Authenticator, request.app.state.authenticator)


async def get_caller(request: Request) -> Caller:
    """Who the request is from (in open mode, the one local learner); 401 otherwise.

    Every /api/* route depends on it (tests/unit/test_auth.py checks)."""
    return await get_authenticator(request).from_header(request.headers.get("authorization"))


SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
BackendDep = Annotated[Backend, Depends(get_backend)]
RedisDep = Annotated[Redis, Depends(get_redis)]
AudioBudgetDep = Annotated[AudioBudget, Depends(get_audio_budget)]
AuthenticatorDep = Annotated[Authenticator, Depends(get_authenticator)]
CallerDep = Annotated[Caller, Depends(get_caller)]
