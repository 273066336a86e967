"""A local server speaking the Anthropic Messages API (`POST /v1/messages`), SSE included."""

import json
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from tests.wire import (
    RecordedRequest,
    ScriptedFailure,
    WireServer,
    count_tokens,
    stream_pieces,
    truncate_words,
)

__all__ = ["AnthropicWireServer"]

# The error `type` Anthropic puts in the body for each status.
ERROR_TYPES: Mapping[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

# From this API version on, the API rejects sampling parameters outright.
NO_SAMPLING_SINCE = "2026-10-21"
SAMPLING_PARAMS = ("temperature", "top_p", "top_k")


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": _request_id(),
    }


def sse(event: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _request_id() -> str:
    return f"req_{uuid.uuid4().hex[:24]}"


class AnthropicWireServer(WireServer):
    """`POST /v1/messages` as api.anthropic.com answers it; `base_url` is the root URL."""

    def __init__(self) -> None:
        super().__init__(title="anthropic-wire")
        self.app.post("/v1/messages")(self._messages)

    def reset(self) -> None:
        super().reset()
        # If set, a stream sends an `event: error` of this type after its first text
        # piece, as the API does when it becomes overloaded mid-reply.
        self.stream_error: str | None = None

    def presented_key(self, request: RecordedRequest) -> str | None:
        return request.headers.get("x-api-key") or super().presented_key(request)

    def error_response(self, failure: ScriptedFailure) -> Response:
        error_type = failure.error_type or ERROR_TYPES.get(failure.status, "api_error")
        message = failure.message or f"scripted {error_type}"
        return JSONResponse(
            error_body(error_type, message),
            status_code=failure.status,
            headers={"request-id": _request_id(), **failure.headers},
        )

    def auth_error_response(self, key_present: bool) -> Response:
        message = "invalid x-api-key" if key_present else "x-api-key header is required"
        return self.error_response(ScriptedFailure(401, "authentication_error", message))

    async def _messages(self, request: Request) -> Response:
        intake = await self.intake(request)
        if intake.refusal is not None:
            return intake.refusal
        recorded = intake.request
        body = recorded.body
        problem = _validate(body, recorded.headers.get("anthropic-version"))
        if problem is not None:
            return self.error_response(ScriptedFailure(400, "invalid_request_error", problem))
        text, cut = truncate_words(self.reply_text, body["max_tokens"])
        stop_reason = "max_tokens" if cut else "end_turn"
        message_id = f"msg_{uuid.uuid4().hex[:24]}"
        input_tokens = count_tokens([body.get("system"), body["messages"]])
        output_tokens = max(1, len(text.split()))
        headers = {"request-id": _request_id()}
        if not body.get("stream"):
            message = {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": [{"type": "text", "text": text}],
                "stop_reason": stop_reason,
                "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
            }
            return JSONResponse(message, headers=headers)
        events = self._events(
            message_id, body["model"], text, stop_reason, input_tokens, output_tokens
        )
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache"},
        )

    async def _events(
        self,
        message_id: str,
        model: str,
        text: str,
        stop_reason: str,
        input_tokens: int,
        output_tokens: int,
    ) -> AsyncIterator[bytes]:
        stream_error = self.stream_error
        start_message: dict[str, Any] = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        }
        yield sse("message_start", {"type": "message_start", "message": start_message})
        yield sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        yield sse("ping", {"type": "ping"})
        for n, piece in enumerate(stream_pieces(text)):
            yield sse(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                },
            )
            if n == 0:
                await self.after_first_piece()
                if stream_error is not None:
                    yield sse("error", error_body(stream_error, f"scripted {stream_error}"))
                    return
        yield sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        )
        yield sse("message_stop", {"type": "message_stop"})


def _validate(body: Any, version: str | None) -> str | None:
    """What the real API would reject this request for, in its words, or None."""
    if not version:
        return "anthropic-version: header is required"
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
    if "system" in body and not isinstance(body["system"], str | list):
        return "system: Input should be a valid string or list"
    if version >= NO_SAMPLING_SINCE:
        for name in SAMPLING_PARAMS:
            if name in body:
                return f"{name}: Extra inputs are not permitted"
    return None
