"""FastAPI dependencies of the gateway, as `Annotated` aliases."""

from typing import Annotated, cast

from fastapi import Depends, Request
from redis.asyncio import Redis

from services.gateway.backend import Backend
from services.gateway.intake import AudioBudget
from services.gateway.settings import GatewaySettings


def get_settings(request: Request) -> GatewaySettings:
    return cast(GatewaySettings, request.app.state.settings)


def get_backend(request: Request) -> Backend:
    return cast(Backend, request.app.state.backend)


def get_redis(request: Request) -> Redis:
    return cast(Redis, request.app.state.redis)


def get_audio_budget(request: Request) -> AudioBudget:
    return cast(AudioBudget, request.app.state.audio_budget)


SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
BackendDep = Annotated[Backend, Depends(get_backend)]
RedisDep = Annotated[Redis, Depends(get_redis)]
AudioBudgetDep = Annotated[AudioBudget, Depends(get_audio_budget)]
