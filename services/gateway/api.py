"""REST routes of the gateway (v1's contract)."""

import uuid

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from services.gateway import validation
from services.gateway.deps import BackendDep, RedisDep, SettingsDep
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
from shared.sessions import active_sessions

VERSION = "2.0.0"

router = APIRouter()


@router.get("/health", response_model=HealthResponse)
async def health(redis: RedisDep, request: Request) -> JSONResponse:
    try:
        await redis.ping()
        redis_state, status = "ok", 200
    except (RedisError, OSError):
        redis_state, status = "unreachable", 503
    body = HealthResponse(
        status="healthy" if status == 200 else "degraded",
        service="gateway",
        version=VERSION,
        redis=redis_state,
        websockets=request.app.state.connections.open,
    )
    return JSONResponse(body.model_dump(), status_code=status)


# Until the PWA is served at "/", the root answers the health check as in v1.
router.add_api_route("/", health, methods=["GET"], include_in_schema=False)


@router.post("/api/conversation", response_model=ConversationResponse)
async def conversation(
    body: ConversationRequest, backend: BackendDep, settings: SettingsDep
) -> ConversationResponse:
    session_id = validation.session_id(body.session_id or str(uuid.uuid4()))
    # As in v1, a clip wins over text when both are sent.
    if body.audio_base64 is not None:
        audio = validation.audio_base64(body.audio_base64, settings.max_audio_bytes)
        reply = await backend.hear(session_id, "api", audio)
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
async def stats(backend: BackendDep, redis: RedisDep, settings: SettingsDep) -> StatsResponse:
    db = await backend.stats()
    active, ids = await active_sessions(redis, settings.redis_ttl, settings.stats_max_session_ids)
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
