"""Every refusal of the gateway is JSON with a `detail` that says why (v1 shape)."""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from services.gateway.tokens import AuthError
from services.gateway.validation import InputError
from shared import metrics
from shared.asking import AskError, unavailable


def _reason(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


REALM = 'Bearer realm="learning-voice-agent"'


def _challenge(exc: AuthError) -> str:
    # RFC 6750 3: no `error` when no credential was sent at all; the body says why.
    if exc.code == "unauthenticated":
        return REALM
    return f'{REALM}, error="invalid_token", error_description="{exc.code}"'


def install(app: FastAPI) -> None:
    @app.exception_handler(AuthError)
    async def auth_error(_: Request, exc: AuthError) -> JSONResponse:
        metrics.AUTH_REFUSED.labels("http", exc.code).inc()
        return JSONResponse(
            {"detail": exc.reason, "code": exc.code},
            status_code=401,
            headers={"WWW-Authenticate": _challenge(exc), "Cache-Control": "no-store"},
        )

    @app.exception_handler(InputError)
    async def input_error(_: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"detail": exc.reason, "code": exc.code}, status_code=exc.status)

    @app.exception_handler(AskError)
    async def backend_error(_: Request, exc: AskError) -> JSONResponse:
        # A refusal that says when to try again (the workers are behind) says it in HTTP too.
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return JSONResponse(
            {"detail": exc.reason, "code": exc.code}, status_code=exc.status, headers=headers
        )

    @app.exception_handler(RedisError)
    async def redis_error(_: Request, exc: RedisError) -> JSONResponse:
        # Every Redis call of a route maps this itself; this catches one that does not.
        failure = unavailable(exc)
        return JSONResponse(
            {"detail": failure.reason, "code": failure.code}, status_code=failure.status
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Malformed JSON or wrong field types are the client's to fix: 400, one reason.
        return JSONResponse({"detail": _reason(exc), "code": "invalid_request"}, status_code=400)
