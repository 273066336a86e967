"""WebSocket `/ws/{session_id}`: v1's message protocol, and streamed replies.

In: `{"type": "text", "text": ...}`, `{"type": "audio", "audio": <base64>}`,
`{"type": "end"}`, `{"type": "ping"}`, and `{"type": "cancel"}`.
Out: `{"type": "response", "user_text", "agent_text", "intent", "cancelled",
"timings"}`, `{"type": "summary", "text"}`, `{"type": "pong"}`, and on any problem
`{"type": "error", "code", "message"}`, after which the connection stays usable.
Conversation messages are answered in the order sent; a ping is answered at once.

A client that connects with `?stream=1` also gets, before each response,
`{"type": "transcript", "text"}` (what was heard, for audio) and
`{"type": "delta", "text"}` pieces whose texts join to the response's `agent_text`.
A message may carry an `"id"` (a string of at most 64 characters); everything that
answers it carries the same `"id"`. `cancel` (with the `id` of the message to stop,
or none for the one being answered) stops a reply: its response comes at once with
what was sent so far and `"cancelled": true`.
"""

import asyncio
import collections
import contextlib
import json
import logging
import time
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, WebSocket
from redis.exceptions import RedisError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from services.gateway import intake, validation
from services.gateway.backend import Backend, BackendError, unavailable
from services.gateway.intake import AudioBudget, Reservation
from services.gateway.messages import error, reply_body
from services.gateway.settings import GatewaySettings
from services.gateway.validation import InputError
from shared.events import AudioReceived, UtteranceReceived, new_id

log = logging.getLogger(__name__)

router = APIRouter()

KNOWN_TYPES = ("text", "audio", "end", "ping", "cancel")
# Close code for a connection refused by policy (RFC 6455): a bad session id.
POLICY_VIOLATION = 1008
MAX_ID_CHARS = 64


@dataclass
class Pending:
    """A conversation message waiting for its turn, or being answered."""

    kind: Literal["text", "audio", "end"]
    # The client's own id for it, echoed in everything that answers it.
    id: str | None
    received: float
    event_id: str
    text: str = ""
    audio: bytes | None = None
    held: Reservation | None = None
    cancelled: bool = False

    def release(self) -> None:
        if self.held is not None:
            self.held.release()


class Connection:
    def __init__(
        self,
        ws: WebSocket,
        backend: Backend,
        settings: GatewaySettings,
        budget: AudioBudget,
        session_id: str,
        *,
        stream: bool,
    ) -> None:
        self._ws = ws
        self._backend = backend
        self._settings = settings
        self._budget = budget
        self._session_id = session_id
        self._stream = stream
        self._waiting: collections.deque[Pending] = collections.deque()
        self._arrived = asyncio.Event()
        self._current: Pending | None = None
        self._send_lock = asyncio.Lock()

    async def send(self, message: dict[str, Any], answering: str | None = None) -> None:
        if answering is not None:
            message = {**message, "id": answering}
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
                await self._dispatch(frame["text"], time.monotonic())
        except WebSocketDisconnect:
            return
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            # Clips still waiting for their turn give their share of the budget back.
            for pending in self._waiting:
                pending.release()
            self._waiting.clear()

    async def _dispatch(self, raw: str, received: float) -> None:
        try:
            message = await intake.parse_json(raw)
        except ValueError:
            await self.send(error("invalid_json", "message is not valid JSON"))
            return
        if not isinstance(message, dict):
            message = {}
        kind = message.get("type")
        answering = message.get("id")
        if answering is not None and (
            not isinstance(answering, str) or not 0 < len(answering) <= MAX_ID_CHARS
        ):
            await self.send(
                error("invalid_id", f"`id` must be a string of 1 to {MAX_ID_CHARS} characters")
            )
            return
        if kind == "ping":
            await self.send({"type": "pong"}, answering)
            return
        if kind == "cancel":
            await self._cancel(answering)
            return
        if kind not in KNOWN_TYPES:
            allowed = ", ".join(KNOWN_TYPES)
            await self.send(
                error("unknown_type", f"unknown message type {kind!r}; use {allowed}"), answering
            )
            return
        try:
            if len(self._waiting) >= self._settings.ws_max_pending:
                # Refused before a clip is decoded: it would be refused anyway.
                raise _too_many_pending(self._settings.ws_max_pending)
            pending = await self._take(message, kind, answering, received)
        except InputError as exc:
            await self.send(error(exc.code, exc.reason), answering)
            return
        self._waiting.append(pending)
        self._arrived.set()

    async def _take(
        self, message: dict[str, Any], kind: str, answering: str | None, received: float
    ) -> Pending:
        if kind == "end":
            return Pending("end", answering, received, new_id())
        if kind == "text":
            text = message.get("text")
            if not isinstance(text, str):
                raise InputError("a text message needs a string `text`", code="empty_text")
            text = validation.utterance(text, self._settings.max_text_chars)
            return Pending("text", answering, received, new_id(), text=text)
        audio = message.get("audio")
        if not isinstance(audio, str):
            raise InputError("an audio message needs base64 `audio`", code="invalid_audio")
        clip, held = await self._budget.decode(audio, self._settings.max_audio_bytes)
        return Pending("audio", answering, received, new_id(), audio=clip, held=held)

    async def _cancel(self, target: str | None) -> None:
        """Stop the reply being written (or, by id, one still waiting its turn).

        A cancel that finds nothing (its reply already came) is not an error: a
        learner's barge-in races the reply's end.
        """
        current = self._current
        if current is not None and (target is None or current.id == target):
            if current.kind != "end" and not current.cancelled:
                current.cancelled = True
                await self._backend.cancel(current.event_id)
            return
        for pending in self._waiting:
            if target is not None and pending.id == target:
                pending.cancelled = True
                return

    async def _next(self) -> Pending:
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        return self._waiting.popleft()

    async def _answer_in_order(self) -> None:
        while True:
            pending = await self._next()
            self._current = pending
            try:
                await self._answer(pending)
            except BackendError as exc:
                await self.send(error(exc.code, exc.reason), pending.id)
            except (RedisError, OSError) as exc:
                failure = unavailable(exc)
                await self.send(error(failure.code, failure.reason), pending.id)
            except WebSocketDisconnect:
                return
            except Exception:
                log.exception("failed to answer a message on session %s", self._session_id)
                await self.send(error("internal", "something went wrong on our side"), pending.id)
            finally:
                self._current = None
                pending.release()

    async def _answer(self, pending: Pending) -> None:
        if pending.kind == "end":
            summary = await self._backend.end(self._session_id, "websocket")
            await self.send({"type": "summary", "text": summary.text}, pending.id)
            return
        if pending.cancelled:
            # Cancelled while it waited: its words are still kept, unanswered.
            await self._backend.cancel(pending.event_id)
        if pending.kind == "audio" and pending.audio is not None:
            clip, pending.audio = pending.audio, None
            event: UtteranceReceived | AudioReceived = await self._backend.audio_event(
                self._session_id,
                "websocket",
                clip,
                held=pending.held,
                event_id=pending.event_id,
                stream=self._stream,
            )
            # Once Redis has the clip, nothing here holds its bytes.
            del clip
        else:
            event = self._backend.text_event(
                self._session_id,
                "websocket",
                pending.text,
                event_id=pending.event_id,
                stream=self._stream,
            )
        async with aclosing(self._backend.converse(event)) as replies:
            async for reply in replies:
                await self.send(reply_body(reply, pending.received), pending.id)


def _too_many_pending(limit: int) -> InputError:
    return InputError(
        f"{limit} messages are already waiting for replies; wait for them before sending more",
        code="too_many_pending",
    )


def _wants_stream(ws: WebSocket) -> bool:
    return ws.query_params.get("stream", "").lower() in ("1", "true", "yes")


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
        await Connection(
            ws,
            state.backend,
            state.settings,
            state.audio_budget,
            session_id,
            stream=_wants_stream(ws),
        ).run()
    finally:
        gauge.closed()
