"""`POST /api/phone-link`: a signed-in learner links the phone they called from
(shared.phones), with the one-time code the call spoke to them."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from services.gateway.deps import CallerDep, RedisDep, SettingsDep
from services.gateway.validation import InputError
from shared import phones
from shared.asking import unavailable

router = APIRouter()


class PhoneLinkRequest(BaseModel):
    # The digits the call said; spaces and dashes as a person types them are fine.
    code: str = Field(max_length=32)


class PhoneLinkResponse(BaseModel):
    linked: bool
    learner: str


@router.post(
    "/api/phone-link",
    response_model=PhoneLinkResponse,
    responses={
        400: {"description": "`invalid_code`: unknown, used or expired"},
        429: {"description": "`too_many_tries`: PHONE_LINK_TRIES a minute"},
    },
)
async def phone_link(
    body: PhoneLinkRequest, caller: CallerDep, redis: RedisDep, settings: SettingsDep
) -> PhoneLinkResponse | JSONResponse:
    """Every call from the number the code was spoken to is the caller's from now
    on: one archive for the phone and the browser."""
    code = "".join(body.code.replace("-", " ").split())
    if not phones.is_code(code):
        raise InputError(
            f"code must be the {phones.CODE_DIGITS} digits the call said", code="invalid_code"
        )
    try:
        wait = await phones.may_try(redis, caller.learner, settings.phone_link_tries)
        if wait is not None:
            return JSONResponse(
                {
                    "detail": f"too many codes tried; try again in {wait} s",
                    "code": "too_many_tries",
                },
                status_code=429,
                headers={"Retry-After": str(wait)},
            )
        linked = await phones.redeem(redis, code, caller.learner)
    except (RedisError, OSError) as exc:
        raise unavailable(exc) from exc
    if linked is None:
        raise InputError(
            "that code is unknown, used or expired; ask for a new one on the call "
            '("link my phone")',
            code="invalid_code",
        )
    return PhoneLinkResponse(linked=True, learner=caller.learner)
