"""A local server speaking OpenAI's chat completions API (`POST /v1/chat/completions`), SSE
included, and its speech-to-text API (`POST /v1/audio/transcriptions`, multipart). Ollama,
vLLM and llama.cpp server answer chat the same way; faster-whisper-server (speaches) and
LocalAI answer transcriptions the same way."""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from email.message import Message
from email.utils import collapse_rfc2231_value
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from tests.wire import (
    RecordedRequest,
    ScriptedFailure,
    WireServer,
    count_tokens,
    stream_pieces,
    truncate_words,
)

__all__ = ["DEFAULT_TRANSCRIPT", "FormPart", "OpenAIWireServer", "parse_multipart"]

DEFAULT_TRANSCRIPT = "Why do leaves change colour in the autumn?"
# Formats this server answers; the real API also has srt, vtt and diarized_json.
TRANSCRIPT_FORMATS = ("json", "text", "verbose_json")

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
        self.app.post("/v1/audio/transcriptions")(self._transcriptions)

    def reset(self) -> None:
        super().reset()
        # If set, a stream sends `data: {"error": ...}` with this type after its first
        # piece, as OpenAI-compatible servers do when generation fails mid-reply.
        self.stream_error: str | None = None
        # If set, the reply repeats the last user message: a test can then tell
        # which request a reply answers.
        self.echo = False
        # The text every transcription answers with, whatever the audio.
        self.transcript: str = DEFAULT_TRANSCRIPT

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
        counted = self.stream_started()
        finished = False
        try:
            for n, piece in enumerate(stream_pieces(text)):
                if n and self.piece_delay > 0:
                    await asyncio.sleep(self.piece_delay)
                yield chunk({"content": piece}, None, with_usage=usage is not None)
                self.piece_sent(counted)
                if n == 0:
                    await self.after_first_piece()
                    if stream_error is not None:
                        message = f"scripted {stream_error}"
                        yield sse_data(error_body(message, stream_error, None))
                        finished = True
                        return
            finished = True
        finally:
            self.stream_left(finished)
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

    async def _transcriptions(self, request: Request) -> Response:
        intake = await self.intake(request)
        try:
            parts = parse_multipart(intake.request.raw, request.headers.get("content-type", ""))
        except ValueError as err:
            if intake.refusal is not None:
                return intake.refusal
            message = f"Could not parse multipart form: {err}"
            return JSONResponse(error_body(message, "invalid_request_error", None), status_code=400)
        # Multipart is not JSON, so `intake` recorded no body (and, during `delay`, the
        # record still has none): record the form fields, and the file's name, type
        # and size (not its bytes: `raw` has them, `parse_multipart` finds them).
        self._record_form(intake.request, _form_summary(parts))
        if intake.refusal is not None:
            return intake.refusal
        problem = _validate_transcription(parts)
        if problem is not None:
            return JSONResponse(error_body(problem, "invalid_request_error", None), status_code=400)
        fields = {part.name: part.text for part in parts if part.filename is None}
        response_format = fields.get("response_format", "json")
        headers = {"x-request-id": _request_id()}
        if response_format == "text":
            # The real API ends plain text with a newline; the SDK hands it over as is.
            return PlainTextResponse(f"{self.transcript}\n", headers=headers)
        if response_format == "verbose_json":
            return JSONResponse(_verbose_transcription(self.transcript), headers=headers)
        return JSONResponse({"text": self.transcript}, headers=headers)

    def _record_form(self, recorded: RecordedRequest, body: dict[str, Any]) -> None:
        with self._lock:
            for i, seen in enumerate(self.requests):
                # By identity: two uploads of one clip make equal records. After a
                # reset() meanwhile, nothing is left to replace.
                if seen is recorded:
                    self.requests[i] = replace(recorded, body=body)
                    return


@dataclass(frozen=True)
class FormPart:
    """One part of a multipart/form-data body."""

    name: str
    # Set for file parts only.
    filename: str | None
    content_type: str | None
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def parse_multipart(body: bytes, content_type: str) -> list[FormPart]:
    """The parts of a multipart/form-data body (RFC 7578), in order; ValueError if malformed.

    Written here because FastAPI's `request.form()` needs python-multipart, which the
    project does not depend on; the SDK's encoder (httpx) writes the plain subset
    handled here: CRLF line ends, quoted parameters, no nested multiparts.
    """
    boundary = _header_param(content_type, "content-type", "boundary")
    if not content_type.lower().startswith("multipart/form-data") or not boundary:
        raise ValueError(f"expected multipart/form-data with a boundary, got {content_type!r}")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    # A CRLF in front makes the first delimiter look like every other one.
    chunks = (b"\r\n" + body).split(delimiter)
    if len(chunks) < 2 or not chunks[-1].startswith(b"--"):
        raise ValueError("the closing boundary is missing")
    parts: list[FormPart] = []
    for chunk in chunks[1:-1]:
        head, separator, data = chunk.partition(b"\r\n\r\n")
        if not separator:
            raise ValueError("a part has no blank line after its headers")
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        field_name = _header_param(disposition, "content-disposition", "name")
        if not disposition.lower().startswith("form-data") or field_name is None:
            raise ValueError(f"a part is not a named form field: {disposition!r}")
        parts.append(
            FormPart(
                name=field_name,
                filename=_header_param(disposition, "content-disposition", "filename"),
                content_type=headers.get("content-type"),
                data=data,
            )
        )
    return parts


def _header_param(value: str, header: str, param: str) -> str | None:
    # The email package already knows quoting, escapes and RFC 2231 parameters.
    message = Message()
    message[header] = value
    found = message.get_param(param, header=header)
    if found is None or isinstance(found, str):
        return found
    return collapse_rfc2231_value(found)


def _form_summary(parts: list[FormPart]) -> dict[str, Any]:
    """The form as a dict: text fields by name (repeated ones as lists), files described."""
    summary: dict[str, Any] = {}
    for part in parts:
        value: Any
        if part.filename is not None:
            value = {
                "filename": part.filename,
                "content_type": part.content_type,
                "size": len(part.data),
            }
        else:
            value = part.text
        if part.name not in summary:
            summary[part.name] = value
        elif isinstance(summary[part.name], list):
            summary[part.name].append(value)
        else:
            summary[part.name] = [summary[part.name], value]
    return summary


def _validate_transcription(parts: list[FormPart]) -> str | None:
    """What the real API would reject this upload for, in words like its own, or None."""
    files = [part for part in parts if part.name == "file" and part.filename is not None]
    fields = {part.name: part.text for part in parts if part.filename is None}
    if not fields.get("model"):
        return "you must provide a model parameter"
    if not files:
        return "1 validation error for Request\nbody -> file\n  field required"
    if not files[0].data:
        return "Audio file might be corrupted or unsupported"
    response_format = fields.get("response_format", "json")
    if response_format not in TRANSCRIPT_FORMATS:
        return f"Invalid value for 'response_format': {response_format!r} is not supported here."
    return None


def _verbose_transcription(text: str) -> dict[str, Any]:
    # Timings are invented (0.4 s a word): no audio is decoded here.
    duration = round(0.4 * max(1, len(text.split())), 2)
    return {
        "task": "transcribe",
        "language": "english",
        "duration": duration,
        "text": text,
        "segments": [
            {
                "id": 0,
                "seek": 0,
                "start": 0.0,
                "end": duration,
                "text": f" {text}",
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": -0.2,
                "compression_ratio": 1.2,
                "no_speech_prob": 0.01,
            }
        ],
    }


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
