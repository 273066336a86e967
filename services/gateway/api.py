"""REST routes of the gateway (v1's contract)."""

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, format_sse_event
from pydantic import ValidationError

from services.gateway import intake, validation
from services.gateway.backend import Backend
from services.gateway.deps import (
    AudioBudgetDep,
    AuthenticatorDep,
    BackendDep,
    CallerDep,
    RedisDep,
    SettingsDep,
)
from services.gateway.intake import AudioBudget
from services.gateway.messages import elapsed_ms, error, reply_body
from services.gateway.schemas import (
    ConversationRequest,
    ConversationResponse,
    DatabaseStats,
    HealthResponse,
    HistoryResponse,
    SearchRequest,
    SearchResponse,
    SessionStats,
    StatsResponse,
    TicketResponse,
)
from services.gateway.settings import GatewaySettings
from services.gateway.tokens import Caller
from shared.asking import AskError
from shared.broker import redis_state
from shared.events import AudioReceived, UtteranceReceived
from shared.streams import UTTERANCE_RECEIVED

VERSION = "2.0.0"

router = APIRouter()


@router.get("/health", response_model=HealthResponse)
@router.get("/health/ready", response_model=HealthResponse, include_in_schema=False)
async def health(redis: RedisDep, backend: BackendDep, request: Request) -> JSONResponse:
    reachable = await redis_state(redis)
    replies = backend.reply_reader_state
    healthy = reachable == "ok" and replies == "ok"
    body = HealthResponse(
        status="healthy" if healthy else "degraded",
        service="gateway",
        version=VERSION,
        redis=reachable,
        replies=replies,
        websockets=request.app.state.connections.open,
    )
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)


# The body is read by hand (see `read_utterance`); the schema still documents it.
_CONVERSATION_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ConversationRequest.model_json_schema()}},
    }
}


async def read_utterance(
    request: Request,
    backend: Backend,
    budget: AudioBudget,
    settings: GatewaySettings,
    caller: Caller,
    *,
    stream: bool,
) -> tuple[str, UtteranceReceived | AudioReceived]:
    """The session and the event for a conversation request, its clip (if any)
    already waiting in Redis.

    Parsed here rather than by FastAPI: a clip's 33 MB of JSON would be parsed on
    the event loop, stalling every other learner's connection.
    """
    try:
        body = await intake.parse_model(ConversationRequest, await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    session_id = validation.session_id(body.session_id or str(uuid.uuid4()))
    await backend.claim(session_id, "api", caller.learner)
    # As in v1, a clip wins over text when both are sent.
    if body.audio_base64 is not None:
        audio, held = await budget.decode(body.audio_base64, settings.max_audio_bytes)
        try:
            event = await backend.audio_event(
                session_id, "api", audio, held=held, stream=stream, learner=caller.learner
            )
        finally:
            held.release()
        return session_id, event
    if body.text is not None:
        text = validation.utterance(body.text, settings.max_text_chars)
        # Refused here while the workers are too far behind, as a clip is before it is
        # stored: a stream's 503 must come before its 200 goes out.
        backend.admit(UTTERANCE_RECEIVED, "api")
        return session_id, backend.text_event(
            session_id, "api", text, stream=stream, learner=caller.learner
        )
    raise HTTPException(400, "No input provided: send `text` or `audio_base64`")


@router.post(
    "/api/conversation", response_model=ConversationResponse, openapi_extra=_CONVERSATION_BODY
)
async def conversation(
    request: Request,
    caller: CallerDep,
    backend: BackendDep,
    budget: AudioBudgetDep,
    settings: SettingsDep,
) -> ConversationResponse:
    received = time.monotonic()
    session_id, event = await read_utterance(
        request, backend, budget, settings, caller, stream=False
    )
    reply = await backend.reply_to(event)
    return ConversationResponse(
        session_id=session_id,
        user_text=reply.user_text,
        agent_text=reply.agent_text,
        intent=reply.intent,
        timestamp=reply.timestamp,
        timings=reply.timings.model_copy(update={"total": elapsed_ms(received)}),
    )


@router.post(
    "/api/conversation/stream",
    # Returned as a response of its own (FastAPI would iterate a generator
    # endpoint only after the input is checked, too late for a plain 400).
    openapi_extra=_CONVERSATION_BODY,
    responses={
        200: {
            "description": "`transcript`, `delta`, then `response` (or `error`) events",
            "content": {"text/event-stream": {}},
        }
    },
)
async def conversation_stream(
    request: Request,
    caller: CallerDep,
    backend: BackendDep,
    budget: AudioBudgetDep,
    settings: SettingsDep,
) -> EventSourceResponse:
    """The reply as Server-Sent Events, with the WebSocket's message bodies:
    `transcript` (for a clip), `delta` pieces, then `response`; a failure after the
    stream began is an `error` event."""
    received = time.monotonic()
    # The caller is known before the stream's 200 goes out: a refusal is a plain 401.
    session_id, event = await read_utterance(
        request, backend, budget, settings, caller, stream=True
    )

    async def events() -> AsyncIterator[bytes]:
        try:
            async with aclosing(backend.converse(event)) as replies:
                async for reply in replies:
                    body = reply_body(reply, received)
                    if body["type"] == "response":
                        body["session_id"] = session_id
                    yield format_sse_event(event=body["type"], data_str=json.dumps(body))
        except AskError as exc:
            body = error(exc.code, exc.reason)
            yield format_sse_event(event="error", data_str=json.dumps(body))

    return EventSourceResponse(events(), headers={"Cache-Control": "no-store"})


@router.post("/api/search", response_model=SearchResponse)
async def search(
    body: SearchRequest, caller: CallerDep, backend: BackendDep, settings: SettingsDep
) -> SearchResponse:
    query = validation.search_query(body.query, settings.max_search_query_chars)
    limit = validation.limit(body.limit, settings.max_search_limit)
    reply = await backend.search(query, limit, learner=caller.learner)
    return SearchResponse(query=body.query, results=reply.results, count=len(reply.results))


@router.get("/api/stats", response_model=StatsResponse)
async def stats(caller: CallerDep, backend: BackendDep) -> StatsResponse:
    """An admin's (and open mode's) are everyone's; a learner's count only their own
    captures, and list neither the sessions of others nor the dead letters."""
    db = await backend.stats(learner=None if caller.admin else caller.learner)
    active, ids = await backend.active_sessions()
    return StatsResponse(
        database=DatabaseStats(
            total_captures=db.total_captures,
            unique_sessions=db.unique_sessions,
            last_capture=db.last_capture,
        ),
        sessions=SessionStats(active=active, ids=ids if caller.admin else []),
        dead_letters=await backend.dead_letters() if caller.admin else {},
    )


@router.get("/api/session/{session_id}/history", response_model=HistoryResponse)
async def history(
    session_id: str,
    caller: CallerDep,
    backend: BackendDep,
    settings: SettingsDep,
    limit: int = Query(20),
) -> HistoryResponse:
    validation.session_id(session_id)
    validation.limit(limit, settings.max_history_limit)
    reply = await backend.history(session_id, limit, learner=caller.learner)
    return HistoryResponse(session_id=session_id, history=reply.history, count=len(reply.history))


@router.post("/api/ws-ticket", response_model=TicketResponse)
async def ws_ticket(caller: CallerDep, authenticator: AuthenticatorDep) -> TicketResponse:
    """A ticket to open one WebSocket with (`/ws/{session_id}?ticket=...`) as this
    caller: a browser cannot send a bearer header there. Good once, for
    WS_TICKET_TTL_S seconds; it appears in access logs, a token must not."""
    ticket = await authenticator.issue_ticket(caller)
    return TicketResponse(ticket=ticket, expires_in=authenticator.ticket_ttl)


@router.get("/health/live", include_in_schema=False)
async def live() -> dict[str, str]:
    """The process serves; whether it can do its work is /health/ready's to say
    (restarting it would not bring Redis back)."""
    return {"status": "alive", "service": "gateway"}
