"""A local server speaking OpenAI's chat completions API (`POST /v1/chat/completions`), SSE
included. Ollama, vLLM and llama.cpp server answer the same way."""

import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from tests.wire import ScriptedFailure, WireServer, count_tokens, stream_pieces, truncate_words

__all__ = ["OpenAIWireServer"]

# (type, code) OpenAI puts in the error body for each status.
ERRORS: Mapping[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}


def error_body(message: str, error_type: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def sse_data(data: Mapping[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    return f"data: {payload}\n\n".encode()


class OpenAIWireServer(WireServer):
    """`POST /v1/chat/completions` as api.openai.com answers it; `base_url` ends in /v1."""

    def __init__(self) -> None:
        super().__init__(title="openai-wire")
        self.app.post("/v1/chat/completions")(self._chat_completions)

    def reset(self) -> None:
        super().reset()
        # If set, a stream sends `data: {"error": ...}` with this type after its first
        # piece, as OpenAI-compatible servers do when generation fails mid-reply.
        self.stream_error: str | None = None
        # If set, the reply repeats the last user message: a test can then tell
        # which request a reply answers.
        self.echo = False

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def error_response(self, failure: ScriptedFailure) -> Response:
        error_type, code = ERRORS.get(failure.status, ("server_error", None))
        error_type = failure.error_type or error_type
        message = failure.message or f"scripted {error_type}"
        return JSONResponse(
            error_body(message, error_type, code),
            status_code=failure.status,
            headers={"x-request-id": _request_id(), **failure.headers},
        )

    def auth_error_response(self, key_present: bool) -> Response:
        if key_present:
            message = "Incorrect API key provided."
            return JSONResponse(
                error_body(message, "invalid_request_error", "invalid_api_key"), status_code=401
            )
        message = "You didn't provide an API key."
        return JSONResponse(error_body(message, "invalid_request_error", None), status_code=401)

    async def _chat_completions(self, request: Request) -> Response:
        intake = await self.intake(request)
        if intake.refusal is not None:
            return intake.refusal
        body = intake.request.body
        problem = _validate(body)
        if problem is not None:
            return JSONResponse(error_body(problem, "invalid_request_error", None), status_code=400)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        reply = f"You said: {body['messages'][-1]['content']}" if self.echo else self.reply_text
        text, cut = truncate_words(reply, limit) if limit else (reply, False)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        prompt_tokens = count_tokens(body["messages"])
        completion_tokens = max(1, len(text.split()))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        finish_reason = "length" if cut else "stop"
        headers = {"x-request-id": _request_id()}
        if not body.get("stream"):
            completion = {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "system_fingerprint": None,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
                "usage": usage,
            }
            return JSONResponse(completion, headers=headers)
        options = body.get("stream_options") or {}
        chunks = self._chunks(
            completion_id,
            body["model"],
            text,
            finish_reason,
            usage if options.get("include_usage") else None,
        )
        return StreamingResponse(chunks, media_type="text/event-stream", headers=headers)

    async def _chunks(
        self,
        completion_id: str,
        model: str,
        text: str,
        finish_reason: str,
        usage: Mapping[str, int] | None,
    ) -> AsyncIterator[bytes]:
        stream_error = self.stream_error
        created = int(time.time())

        def chunk(
            delta: Mapping[str, Any], finish: str | None, *, with_usage: bool = False
        ) -> bytes:
            data: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if with_usage:
                data["usage"] = None
            return sse_data(data)

        yield chunk({"role": "assistant", "content": ""}, None, with_usage=usage is not None)
        for n, piece in enumerate(stream_pieces(text)):
            yield chunk({"content": piece}, None, with_usage=usage is not None)
            if n == 0:
                await self.after_first_piece()
                if stream_error is not None:
                    message = f"scripted {stream_error}"
                    yield sse_data(error_body(message, stream_error, None))
                    return
        yield chunk({}, finish_reason, with_usage=usage is not None)
        if usage is not None:
            yield sse_data(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": None,
                    "choices": [],
                    "usage": dict(usage),
                }
            )
        yield sse_data("[DONE]")


def _request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def _validate(body: Any) -> str | None:
    """What the real API would reject this request for, in its words, or None."""
    if not isinstance(body, dict):
        return "We could not parse the JSON body of your request."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "you must provide a model parameter"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "[] is too short - 'messages'"
    roles = ("system", "developer", "user", "assistant", "tool")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in roles:
            return f"Invalid value for 'messages[{i}].role'"
    return None
