"""REST routes of the gateway (v1's contract)."""

import asyncio
import uuid

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from redis.exceptions import RedisError

from services.gateway import intake, validation
from services.gateway.deps import AudioBudgetDep, BackendDep, RedisDep, SettingsDep
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
)

VERSION = "2.0.0"

router = APIRouter()


# A health check answers at once: Redis's own retries would take seconds.
HEALTH_PING_TIMEOUT_S = 1.0


@router.get("/health", response_model=HealthResponse)
async def health(redis: RedisDep, backend: BackendDep, request: Request) -> JSONResponse:
    try:
        async with asyncio.timeout(HEALTH_PING_TIMEOUT_S):
            await redis.ping()
        redis_state = "ok"
    except (RedisError, OSError, TimeoutError):
        redis_state = "unreachable"
    replies = backend.reply_reader_state
    healthy = redis_state == "ok" and replies == "ok"
    body = HealthResponse(
        status="healthy" if healthy else "degraded",
        service="gateway",
        version=VERSION,
        redis=redis_state,
        replies=replies,
        websockets=request.app.state.connections.open,
    )
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)


# Until the PWA is served at "/", the root answers the health check as in v1.
router.add_api_route("/", health, methods=["GET"], include_in_schema=False)


@router.post(
    "/api/conversation",
    response_model=ConversationResponse,
    # The body is read by hand (below); the schema still documents it.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ConversationRequest.model_json_schema()}},
        }
    },
)
async def conversation(
    request: Request, backend: BackendDep, budget: AudioBudgetDep, settings: SettingsDep
) -> ConversationResponse:
    # Parsed here rather than by FastAPI: a clip's 33 MB of JSON would be parsed
    # on the event loop, stalling every other learner's connection.
    try:
        body = await intake.parse_model(ConversationRequest, await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    session_id = validation.session_id(body.session_id or str(uuid.uuid4()))
    # As in v1, a clip wins over text when both are sent.
    if body.audio_base64 is not None:
        audio, held = await budget.decode(body.audio_base64, settings.max_audio_bytes)
        try:
            reply = await backend.hear(session_id, "api", audio, held=held)
        finally:
            held.release()
    elif body.text is not None:
        text = validation.utterance(body.text, settings.max_text_chars)
        reply = await backend.say(session_id, "api", text)
    else:
        raise HTTPException(400, "No input provided: send `text` or `audio_base64`")
    return ConversationResponse(
        session_id=session_id,
        user_text=reply.user_text,
        agent_text=reply.agent_text,
        intent=reply.intent,
        timestamp=reply.timestamp,
    )


@router.post("/api/search", response_model=SearchResponse)
async def search(body: SearchRequest, backend: BackendDep, settings: SettingsDep) -> SearchResponse:
    query = validation.search_query(body.query, settings.max_search_query_chars)
    limit = validation.limit(body.limit, settings.max_search_limit)
    reply = await backend.search(query, limit)
    return SearchResponse(query=body.query, results=reply.results, count=len(reply.results))


@router.get("/api/stats", response_model=StatsResponse)
async def stats(backend: BackendDep) -> StatsResponse:
    db = await backend.stats()
    active, ids = await backend.active_sessions()
    return StatsResponse(
        database=DatabaseStats(
            total_captures=db.total_captures,
            unique_sessions=db.unique_sessions,
            last_capture=db.last_capture,
        ),
        sessions=SessionStats(active=active, ids=ids),
    )


@router.get("/api/session/{session_id}/history", response_model=HistoryResponse)
async def history(
    session_id: str, backend: BackendDep, settings: SettingsDep, limit: int = Query(20)
) -> HistoryResponse:
    validation.session_id(session_id)
    validation.limit(limit, settings.max_history_limit)
    reply = await backend.history(session_id, limit)
    return HistoryResponse(session_id=session_id, history=reply.history, count=len(reply.history))
