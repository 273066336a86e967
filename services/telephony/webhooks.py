"""Twilio's webhooks (Gather mode: v1's contract; the answer to a call in relay
mode; recordings and the call's end in both), and /health.

Twilio posts a form; every answer is TwiML. A webhook whose signature is not
Twilio's gets 403 before anything is read from it or published (see signatures).
"""

import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData

from services.telephony import linking
from services.telephony.calls import Kept, call_session, checked_id
from services.telephony.deps import CallsDep, RedisDep, SettingsDep, SignedForm, TwiMLDep
from services.telephony.errors import twiml_response
from services.telephony.privacy import caller_hash
from services.telephony.settings import TelephonySettings
from services.telephony.twiml import (
    APOLOGY,
    FAREWELL_APOLOGY,
    NOT_HEARD,
    SILENT_FAREWELL,
    TwiML,
)
from shared.asking import AskError
from shared.broker import redis_state
from shared.events import CallRecorded
from shared.streams import CALL_EVENTS

log = logging.getLogger(__name__)

VERSION = "2.0.0"
# Twilio sends the same token again when it retries a webhook.
IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"
# CallStatus values after which the call is over (the last status callback).
ENDED = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})

router = APIRouter()


class HealthResponse(BaseModel):
    status: str
    service: str
    version: str
    redis: str
    # This instance's reader of its reply stream: "ok", "reconnecting", "stopped".
    replies: str
    mode: str
    # False in local mode (no TWILIO_AUTH_TOKEN).
    signatures_checked: bool


@router.get("/health", response_model=HealthResponse)
@router.get("/health/ready", response_model=HealthResponse, include_in_schema=False)
async def health(redis: RedisDep, calls: CallsDep, settings: SettingsDep) -> JSONResponse:
    reachable = await redis_state(redis)
    replies = calls.reply_reader_state
    healthy = reachable == "ok" and replies == "ok"
    body = HealthResponse(
        status="healthy" if healthy else "degraded",
        service="telephony",
        version=VERSION,
        redis=reachable,
        replies=replies,
        mode=settings.twilio_mode,
        signatures_checked=settings.signatures_checked,
    )
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)


def _session(request: Request, form: FormData) -> str | None:
    return call_session(request.query_params.get("session_id"), _field(form, "CallSid"))


def _field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _caller(form: FormData, settings: TelephonySettings) -> str | None:
    return caller_hash(_field(form, "From"), settings.hash_secret)


def _silent(request: Request) -> int:
    """Turns in a row that heard nothing clear, as the URL Twilio follows counts them."""
    value = request.query_params.get("silent", "")
    return int(value) if value.isdigit() and len(value) < 4 else 0


def _whole_seconds(value: str) -> int | None:
    return int(value) if value.isdigit() and len(value) < 10 else None


def _confidence(value: str) -> float | None:
    """Twilio's Confidence (0 to 1); None when it sent none (some speech models do
    not), which counts as heard."""
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _answer(twiml: TwiML, session_id: str, event_id: str, kept: Kept, *, first: bool) -> str:
    if kept.state == "done":
        return twiml.turn(session_id, kept.agent_text or APOLOGY)
    if kept.state == "pending":
        log.info("%s: the reply to %s is not in yet, the caller holds", session_id, event_id)
        return twiml.hold(session_id, event_id, first=first)
    return twiml.turn(session_id, APOLOGY)


@router.post("/twilio/voice")
async def voice(
    request: Request, form: SignedForm, settings: SettingsDep, twiml: TwiMLDep
) -> Response:
    """A call comes in: the greeting at once (no broker or model before it); in
    relay mode, the ConversationRelay that greets the caller."""
    session = _session(request, form)
    if session is None:
        log.warning("a call without a usable CallSid: ended")
        return twiml_response(twiml.farewell(FAREWELL_APOLOGY))
    if "session_id" not in request.query_params:
        log.info("call %s from caller %s", session, _caller(form, settings) or "unknown")
    if settings.twilio_mode == "relay":
        base = settings.public_base_url or str(request.base_url)
        return twiml_response(twiml.relay(session, base))
    silent = _silent(request)
    if silent >= settings.max_reprompts:
        log.info("%s: nothing heard after the greeting %d times, hung up", session, silent)
        return twiml_response(twiml.farewell(SILENT_FAREWELL))
    return twiml_response(twiml.greeting(session, silent=silent))


@router.post("/twilio/process-speech")
async def process_speech(
    request: Request,
    form: SignedForm,
    settings: SettingsDep,
    calls: CallsDep,
    twiml: TwiMLDep,
    redis: RedisDep,
) -> Response:
    """What the caller said: the reply, or a holding phrase if it takes longer
    than REPLY_DEADLINE; unclear speech is asked for again, without the model."""
    session = _session(request, form)
    if session is None:
        return twiml_response(twiml.farewell(FAREWELL_APOLOGY))
    speech = " ".join(_field(form, "SpeechResult").split())[: settings.max_text_chars]
    confidence = _confidence(_field(form, "Confidence"))
    if not speech or (confidence is not None and confidence < settings.min_confidence):
        why = "nothing heard" if not speech else f"confidence {confidence:.2f}"
        silent = _silent(request) + 1
        if silent >= settings.max_reprompts:
            log.info("%s: %s, %d times in a row: hung up", session, why, silent)
            return twiml_response(twiml.farewell(SILENT_FAREWELL))
        log.info("%s: %s, asked again", session, why)
        return twiml_response(twiml.turn(session, NOT_HEARD, silent=silent))
    if linking.asks_to_link(speech):
        try:
            spoken = await linking.link_reply(redis, settings, _caller(form, settings))
        except AskError as exc:
            log.warning("%s: no link code: %s", session, exc.reason)
            spoken = APOLOGY
        log.info("%s: the caller asked to link their phone", session)
        return twiml_response(twiml.turn(session, spoken))
    try:
        event_id, kept = await calls.ask(
            session,
            speech,
            caller=_caller(form, settings),
            idempotency_token=request.headers.get(IDEMPOTENCY_HEADER),
        )
    except AskError as exc:
        log.warning("%s: could not ask: %s", session, exc.reason)
        return twiml_response(twiml.turn(session, APOLOGY))
    return twiml_response(_answer(twiml, session, event_id, kept, first=True))


@router.post("/twilio/reply")
async def reply(request: Request, form: SignedForm, calls: CallsDep, twiml: TwiMLDep) -> Response:
    """Where a caller on hold is redirected: the reply once it is there."""
    session = _session(request, form)
    event_id = checked_id(request.query_params.get("event_id"))
    if session is None:
        return twiml_response(twiml.farewell(FAREWELL_APOLOGY))
    if event_id is None:
        return twiml_response(twiml.turn(session, APOLOGY))
    try:
        kept = await calls.pick_up(session, event_id)
    except AskError as exc:
        log.warning("%s: could not pick the reply up: %s", session, exc.reason)
        return twiml_response(twiml.turn(session, APOLOGY))
    return twiml_response(_answer(twiml, session, event_id, kept, first=False))


@router.post("/twilio/status")
async def status(request: Request, form: SignedForm, calls: CallsDep, twiml: TwiMLDep) -> Response:
    """Twilio's status callback: a call that is over ends its session."""
    call_status = _field(form, "CallStatus")
    session = _session(request, form)
    if call_status in ENDED and session is not None:
        log.info("call %s is over (%s)", session, call_status)
        calls.end_later(session)
    return twiml_response(twiml.empty())


@router.post("/twilio/relay-ended")
async def relay_ended(
    request: Request, form: SignedForm, settings: SettingsDep, twiml: TwiMLDep
) -> Response:
    """Twilio's `<Connect action>`: the ConversationRelay session is over. Ended by
    us (a goodbye): hang up. Failed (Twilio could not reach or keep the WebSocket):
    the call goes on in Gather mode rather than dropping the caller."""
    session = _session(request, form)
    status = _field(form, "SessionStatus")
    if session is not None and status in ("failed", "error") and not _field(form, "HandoffData"):
        log.warning("%s: the relay session %s; the call goes on in gather mode", session, status)
        return twiml_response(twiml.turn(session, APOLOGY))
    return twiml_response(twiml.hang_up())


@router.post("/twilio/recording")
async def recording(
    request: Request, form: SignedForm, calls: CallsDep, twiml: TwiMLDep
) -> Response:
    """Twilio's recording status callback: a finished recording is kept, by
    reference (its SID and URL), with the call's exchanges in the archive."""
    session = _session(request, form)
    sid = _field(form, "RecordingSid")
    url = _field(form, "RecordingUrl")
    status = _field(form, "RecordingStatus") or "completed"
    if session is None or not sid or not url:
        log.warning("a recording callback without a call, RecordingSid or RecordingUrl: ignored")
        return twiml_response(twiml.empty())
    if status != "completed":
        log.info("%s: recording %s is %s", session, sid, status)
        return twiml_response(twiml.empty())
    try:
        event = CallRecorded(
            session_id=session,
            source="twilio",
            recording_sid=sid,
            recording_url=url,
            duration_s=_whole_seconds(_field(form, "RecordingDuration")),
        )
    except ValidationError as exc:
        log.warning("%s: an unusable recording callback ignored: %s", session, exc)
        return twiml_response(twiml.empty())
    try:
        await calls.conversations.tell(CALL_EVENTS, event)
    except AskError as exc:
        # Not 2xx: Twilio retries a callback that failed.
        log.warning("%s: recording %s not kept yet: %s", session, sid, exc.reason)
        return Response(exc.reason, status_code=503, media_type="text/plain")
    log.info("%s: recording %s (%s s) kept", session, sid, event.duration_s)
    return twiml_response(twiml.empty())


@router.get("/health/live", include_in_schema=False)
async def live() -> dict[str, str]:
    """The process serves; whether it can do its work is /health/ready's to say
    (restarting it would not bring Redis back)."""
    return {"status": "alive", "service": "telephony"}
