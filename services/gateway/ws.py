"""WebSocket `/ws/{session_id}`: v1's message protocol.

In: `{"type": "text", "text": ...}`, `{"type": "audio", "audio": <base64>}`,
`{"type": "end"}`, `{"type": "ping"}`.
Out: `{"type": "response", "user_text", "agent_text", "intent"}`,
`{"type": "summary", "text"}`, `{"type": "pong"}`, and on any problem
`{"type": "error", "code", "message"}`, after which the connection stays usable.
Conversation messages are answered in the order sent; a ping is answered at once.
"""

import asyncio
import contextlib
import json
import logging
from typing import Any

from fastapi import APIRouter, WebSocket
from redis.exceptions import RedisError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from services.gateway import intake, validation
from services.gateway.backend import Backend, BackendError, unavailable
from services.gateway.intake import AudioBudget, Reservation
from services.gateway.settings import GatewaySettings
from services.gateway.validation import InputError

log = logging.getLogger(__name__)

router = APIRouter()

KNOWN_TYPES = ("text", "audio", "end", "ping")
# Close code for a connection refused by policy (RFC 6455): a bad session id.
POLICY_VIOLATION = 1008


def error(code: str, message: str) -> dict[str, str]:
    return {"type": "error", "code": code, "message": message}


class Connection:
    def __init__(
        self,
        ws: WebSocket,
        backend: Backend,
        settings: GatewaySettings,
        budget: AudioBudget,
        session_id: str,
    ) -> None:
        self._ws = ws
        self._backend = backend
        self._settings = settings
        self._budget = budget
        self._session_id = session_id
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(settings.ws_max_pending)
        self._send_lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            if self._ws.application_state is WebSocketState.CONNECTED:
                await self._ws.send_text(json.dumps(message))

    async def run(self) -> None:
        worker = asyncio.create_task(self._answer_in_order())
        try:
            while True:
                frame = await self._ws.receive()
                if frame["type"] == "websocket.disconnect":
                    return
                if frame.get("text") is None:
                    await self.send(error("binary_frame", "send JSON messages as text frames"))
                    continue
                await self._dispatch(frame["text"])
        except WebSocketDisconnect:
            return
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            # Clips still waiting for their turn give their share of the budget back.
            while not self._queue.empty():
                _release(self._queue.get_nowait())

    async def _dispatch(self, raw: str) -> None:
        try:
            message = await intake.parse_json(raw)
        except ValueError:
            await self.send(error("invalid_json", "message is not valid JSON"))
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "ping":
            await self.send({"type": "pong"})
            return
        if kind not in KNOWN_TYPES:
            allowed = ", ".join(KNOWN_TYPES)
            await self.send(error("unknown_type", f"unknown message type {kind!r}; use {allowed}"))
            return
        try:
            if kind == "text":
                text = message.get("text")
                if not isinstance(text, str):
                    raise InputError("a text message needs a string `text`", code="empty_text")
                message["text"] = validation.utterance(text, self._settings.max_text_chars)
            elif kind == "audio":
                audio = message.get("audio")
                if not isinstance(audio, str):
                    raise InputError("an audio message needs base64 `audio`", code="invalid_audio")
                if self._queue.full():
                    # Refused before decoding: a full queue would refuse it anyway.
                    raise _too_many_pending(self._settings.ws_max_pending)
                message["audio"], message["held"] = await self._budget.decode(
                    audio, self._settings.max_audio_bytes
                )
        except InputError as exc:
            await self.send(error(exc.code, exc.reason))
            return
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            _release(message)
            refusal = _too_many_pending(self._settings.ws_max_pending)
            await self.send(error(refusal.code, refusal.reason))

    async def _answer_in_order(self) -> None:
        while True:
            message = await self._queue.get()
            try:
                await self.send(await self._answer(message))
            except BackendError as exc:
                await self.send(error(exc.code, exc.reason))
            except (RedisError, OSError) as exc:
                failure = unavailable(exc)
                await self.send(error(failure.code, failure.reason))
            except WebSocketDisconnect:
                return
            except Exception:
                log.exception("failed to answer a message on session %s", self._session_id)
                await self.send(error("internal", "something went wrong on our side"))
            finally:
                _release(message)

    async def _answer(self, message: dict[str, Any]) -> dict[str, Any]:
        if message["type"] == "end":
            summary = await self._backend.end(self._session_id, "websocket")
            return {"type": "summary", "text": summary.text}
        if message["type"] == "audio":
            # Popped, not read: once Redis has the clip, nothing here holds its bytes.
            reply = await self._backend.hear(
                self._session_id, "websocket", message.pop("audio"), held=message.get("held")
            )
        else:
            reply = await self._backend.say(self._session_id, "websocket", message["text"])
        return {
            "type": "response",
            "user_text": reply.user_text,
            "agent_text": reply.agent_text,
            "intent": reply.intent,
        }


def _release(message: dict[str, Any]) -> None:
    held = message.pop("held", None)
    if isinstance(held, Reservation):
        held.release()


def _too_many_pending(limit: int) -> InputError:
    return InputError(
        f"{limit} messages are already waiting for replies; wait for them before sending more",
        code="too_many_pending",
    )


@router.websocket("/ws/{session_id}")
async def websocket_endpoint(ws: WebSocket, session_id: str) -> None:
    await ws.accept()
    try:
        validation.session_id(session_id)
    except InputError as exc:
        await ws.send_text(json.dumps(error(exc.code, exc.reason)))
        await ws.close(code=POLICY_VIOLATION, reason="invalid session id")
        return
    gauge = ws.app.state.connections
    gauge.opened()
    try:
        state = ws.app.state
        await Connection(ws, state.backend, state.settings, state.audio_budget, session_id).run()
    finally:
        gauge.closed()
