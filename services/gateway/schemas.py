"""REST bodies of the gateway, exactly v1's shapes (and v2's few additions)."""

from datetime import datetime

from pydantic import BaseModel, field_serializer

from shared.events import HistoryItem, Intent, SearchHit, Timings


class ConversationRequest(BaseModel):
    session_id: str | None = None
    text: str | None = None
    audio_base64: str | None = None


class ConversationResponse(BaseModel):
    session_id: str
    user_text: str
    agent_text: str
    intent: Intent
    timestamp: datetime
    # Where the reply's time went, in milliseconds (see the README).
    timings: Timings

    @field_serializer("timestamp")
    def _zulu(self, value: datetime) -> str:
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")


class SearchRequest(BaseModel):
    query: str
    limit: int = 20


class SearchResponse(BaseModel):
    query: str
    results: list[SearchHit]
    count: int


class DatabaseStats(BaseModel):
    total_captures: int
    unique_sessions: int
    last_capture: str | None


class SessionStats(BaseModel):
    active: int
    ids: list[str]


class StatsResponse(BaseModel):
    database: DatabaseStats
    sessions: SessionStats
    # Messages the workers gave up on, per stream they came from (v2; see
    # `python -m scripts.dead_letters`).
    dead_letters: dict[str, int] = {}


class HistoryResponse(BaseModel):
    session_id: str
    history: list[HistoryItem]
    count: int


class TicketResponse(BaseModel):
    ticket: str
    # Seconds left to open the WebSocket with it.
    expires_in: int


class HealthResponse(BaseModel):
    status: str
    service: str
    version: str
    redis: str
    # This instance's reader of its reply stream: "ok", "reconnecting" (Redis is
    # away) or "stopped"; anything but "ok" makes the check fail (503).
    replies: str
    # Open WebSocket connections on this instance.
    websockets: int
