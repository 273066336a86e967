"""FastAPI dependencies of telephony, as `Annotated` aliases."""

from typing import Annotated, cast

from fastapi import Depends, Request
from redis.asyncio import Redis
from starlette.datastructures import FormData

from services.telephony.calls import Calls
from services.telephony.settings import TelephonySettings
from services.telephony.signatures import Signatures
from services.telephony.twiml import TwiML


def get_settings(request: Request) -> TelephonySettings:
    return cast(TelephonySettings, request.app.state.settings)


def get_calls(request: Request) -> Calls:
    return cast(Calls, request.app.state.calls)


def get_redis(request: Request) -> Redis:
    return cast(Redis, request.app.state.redis)


def get_twiml(request: Request) -> TwiML:
    return cast(TwiML, request.app.state.twiml)


async def signed_form(request: Request) -> FormData:
    """The webhook's form, once its signature is shown to be Twilio's (else 403)."""
    signatures = cast(Signatures, request.app.state.signatures)
    return await signatures.signed_form(request)


SettingsDep = Annotated[TelephonySettings, Depends(get_settings)]
CallsDep = Annotated[Calls, Depends(get_calls)]
RedisDep = Annotated[Redis, Depends(get_redis)]
TwiMLDep = Annotated[TwiML, Depends(get_twiml)]
SignedForm = Annotated[FormData, Depends(signed_form)]
