"""The JSON bodies the gateway sends about a conversation, on the WebSocket and as
Server-Sent Events alike."""

import time
from typing import Any

from shared.events import ConversationReply, DeltaReply, TranscriptReply


def elapsed_ms(since: float) -> float:
    """Milliseconds since `since` (a `time.monotonic()` reading)."""
    return round((time.monotonic() - since) * 1000, 2)


def error(code: str, message: str) -> dict[str, str]:
    return {"type": "error", "code": code, "message": message}


def reply_body(
    reply: TranscriptReply | DeltaReply | ConversationReply, received: float
) -> dict[str, Any]:
    """A reply as the learner's client gets it; `received` is when the gateway got
    the message it answers, for the response's `timings.total`."""
    if isinstance(reply, TranscriptReply):
        return {"type": "transcript", "text": reply.text}
    if isinstance(reply, DeltaReply):
        return {"type": "delta", "text": reply.text}
    # v1's response, with whether it was cut short and where its time went.
    timings = reply.timings.model_copy(update={"total": elapsed_ms(received)})
    return {
        "type": "response",
        "user_text": reply.user_text,
        "agent_text": reply.agent_text,
        "intent": reply.intent,
        "cancelled": reply.cancelled,
        "timings": timings.model_dump(),
    }
