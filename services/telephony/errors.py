"""Twilio never gets a 500: a failure is TwiML that says sorry. A request that is
not Twilio's gets a plain refusal (403) with the reason."""

from fastapi import FastAPI, Request, Response
from fastapi.responses import PlainTextResponse

from services.telephony.calls import checked_id
from services.telephony.signatures import Refused
from services.telephony.twiml import APOLOGY, FAREWELL_APOLOGY, TwiML


def twiml_response(twiml: str) -> Response:
    return Response(twiml, media_type="application/xml")


def install(app: FastAPI) -> None:
    @app.exception_handler(Refused)
    async def refused(_: Request, exc: Refused) -> PlainTextResponse:
        return PlainTextResponse(exc.reason, status_code=exc.status)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> Response:
        # Starlette logs the traceback once this answer is sent. The form may be
        # gone: the URL's session (every link after the greeting has one) keeps
        # the call going, without it the call ends politely.
        twiml: TwiML = request.app.state.twiml
        session = checked_id(request.query_params.get("session_id"))
        if session is not None:
            return twiml_response(twiml.turn(session, APOLOGY))
        return twiml_response(twiml.farewell(FAREWELL_APOLOGY))
