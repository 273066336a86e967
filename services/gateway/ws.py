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

A text or audio message with an `id` is answered once per session, however often
it is sent: a client may keep unanswered messages in an outbox and send them again,
same `id`, after a dropped connection, even if the gateway had taken them. A resend
of an id answered already, or being answered (on this connection or one that
dropped), publishes nothing: it gets that `response` again with `"replayed": true`
(no transcript or deltas), or a `timeout` error if none comes within REPLY_TIMEOUT.
Answers are kept WS_REPLAY_TTL seconds. A message that got an error was not answered:
sending it again tries again. When a connection drops, the message being answered,
if it has an `id`, is still answered and kept for its resend; messages still waiting
their turn are dropped. Messages without an `id` are answered as in v1.

With AUTH_MODE=token a connection authenticates first (a `?ticket=`, or a first
`{"type": "auth", "token": ...}` message; see ws_auth.py); in open mode nothing
changes, and an `auth` message is answered `authenticated` as the local learner.
"""

import asyncio
import collections
import json
import logging
import time
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, WebSocket
from redis.exceptions import RedisError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from services.gateway import intake, validation, ws_auth
from services.gateway.backend import Backend
from services.gateway.intake import AudioBudget, Reservation
from services.gateway.messages import error, reply_body
from services.gateway.replay import RENEW_EVERY_S, AnswerLog
from services.gateway.settings import GatewaySettings
from services.gateway.tokens import Caller
from services.gateway.validation import InputError
from services.gateway.ws_auth import MAX_ID_CHARS, POLICY_VIOLATION
from shared import metrics, telemetry
from shared.asking import AskError, timed_out, unavailable
from shared.events import AudioReceived, ConversationReply, UtteranceReceived, new_id
from shared.tasks import cancel_all

log = logging.getLogger(__name__)

router = APIRouter()

KNOWN_TYPES = ("text", "audio", "end", "ping", "cancel", "auth")
# How often a resend checks whether the answer it waits for has been kept.
REPLAY_POLL_S = 0.1
# Giving up a claim may happen while the server shuts down: it must not hold that up.
RELEASE_TIMEOUT_S = 1.0
# The close code uvicorn's disconnect carries when the server itself is shutting down.
SERVICE_RESTART = 1012


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

    @property
    def replayable(self) -> bool:
        """Whether a resend of it must get this answer, not a second one."""
        return self.id is not None and self.kind != "end"


class Connection:
    def __init__(
        self,
        ws: WebSocket,
        backend: Backend,
        settings: GatewaySettings,
        budget: AudioBudget,
        answers: AnswerLog,
        session_id: str,
        *,
        stream: bool,
        caller: Caller,
    ) -> None:
        self._ws = ws
        self._caller = caller
        self._backend = backend
        self._settings = settings
        self._budget = budget
        self._answers = answers
        self._session_id = session_id
        self._stream = stream
        self._waiting: collections.deque[Pending] = collections.deque()
        self._arrived = asyncio.Event()
        self._current: Pending | None = None
        self._send_lock = asyncio.Lock()
        # False once the client left: what is still being answered is sent nowhere.
        self._open = True

    async def send(self, message: dict[str, Any], answering: str | None = None) -> None:
        if answering is not None:
            message = {**message, "id": answering}
        async with self._send_lock:
            if not self._open or self._ws.application_state is not WebSocketState.CONNECTED:
                return
            try:
                await self._ws.send_text(json.dumps(message))
                metrics.WS_MESSAGES.labels("ws", "sent", str(message.get("type"))).inc()
            except WebSocketDisconnect:
                # Gone before its disconnect was read: the answer under way still
                # finishes (a resend of its id gets it), it is just not sent.
                self._open = False

    async def run(self) -> None:
        worker = asyncio.create_task(self._answer_in_order())
        try:
            shutdown = await self._receive_until_gone()
            self._close()
            current = self._current
            if shutdown or current is None or not current.replayable:
                worker.cancel()
            # Waits without cancelling the worker, or taking its error: a cancel of
            # this task (the server stopping) comes out of here, and `finally` then
            # stops the worker.
            await asyncio.wait([worker])
        finally:
            self._close()
            await cancel_all([worker], "connection worker")

    async def _receive_until_gone(self) -> bool:
        """Take the client's messages until it leaves; True if the server is stopping."""
        try:
            while True:
                frame = await self._ws.receive()
                if frame["type"] == "websocket.disconnect":
                    return frame.get("code") == SERVICE_RESTART
                if frame.get("text") is None:
                    await self.send(error("binary_frame", "send JSON messages as text frames"))
                    continue
                await self._dispatch(frame["text"], time.monotonic())
        except WebSocketDisconnect as exc:
            return exc.code == SERVICE_RESTART

    def _close(self) -> None:
        self._open = False
        # Messages still waiting for their turn are dropped (nothing was published for
        # them), and clips among them give their share of the budget back.
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
        # Known types only as labels: a client must not mint label values.
        known = kind if kind in KNOWN_TYPES else "other"
        metrics.WS_MESSAGES.labels("ws", "received", str(known)).inc()
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
        if kind == "auth":
            await self._reauth(answering)
            return
        if kind == "cancel":
            try:
                await self._cancel(answering)
            except AskError as exc:
                # Redis is away: the reply may go on, the connection does.
                await self.send(error(exc.code, exc.reason), answering)
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

    async def _reauth(self, answering: str | None) -> None:
        # Open mode: a client that authenticates anyway is the local learner. Token
        # mode: who the connection is from was settled before this message.
        if self._caller.via == "open":
            await self.send(ws_auth.authenticated(self._caller), answering)
            return
        await self.send(
            error("already_authenticated", "this connection is authenticated already"), answering
        )

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
        # Once the client left, the message being answered is finished, then no more.
        while self._open:
            pending = await self._next()
            self._current = pending
            try:
                await self._answer(pending)
            except AskError as exc:
                await self.send(error(exc.code, exc.reason), pending.id)
            except (RedisError, OSError) as exc:
                failure = unavailable(exc)
                await self.send(error(failure.code, failure.reason), pending.id)
            except Exception:
                log.exception("failed to answer a message on session %s", self._session_id)
                await self.send(error("internal", "something went wrong on our side"), pending.id)
            finally:
                self._current = None
                pending.release()

    async def _answer(self, pending: Pending) -> None:
        if pending.kind == "end":
            summary = await self._backend.end(
                self._session_id, "websocket", learner=self._caller.learner
            )
            await self.send({"type": "summary", "text": summary.text}, pending.id)
            return
        if pending.id is None:
            await self._converse(pending, keep_as=None)
            return
        kept = await self._claim(pending, pending.id)
        if kept is not None:
            await self.send({**kept, "replayed": True}, pending.id)
            return
        renewing = asyncio.create_task(self._renew(pending.id, pending.event_id))
        try:
            await self._converse(pending, keep_as=pending.id)
        except BaseException:
            # Every error, input errors included, gives the claim up: an error is
            # not an answer, and its code does not say a resend fails the same way
            # (a clip that expired in Redis is refused as `invalid_audio`, and sent
            # again it is heard). A resend refused again costs a decode at most.
            await self._release(pending.id)
            raise
        finally:
            renewing.cancel()

    async def _renew(self, answer_id: str, owner: str) -> None:
        """Keeps the claim on `answer_id` alive while this attempt answers it."""
        while True:
            await asyncio.sleep(RENEW_EVERY_S)
            try:
                if not await self._answers.renew(self._session_id, answer_id, owner):
                    return
            except (RedisError, OSError) as exc:
                # Redis away: the claim may lapse, and a resend then asks again.
                log.debug(
                    "could not renew the claim on %s/%s: %s", self._session_id, answer_id, exc
                )

    async def _claim(self, pending: Pending, answer_id: str) -> dict[str, Any] | None:
        """None once this attempt holds the claim on `answer_id`, or the body kept
        for it when it was answered already (or is answered while this waits)."""
        own = pending.event_id
        timeout = self._settings.reply_timeout
        try:
            async with asyncio.timeout(timeout):
                while True:
                    claim = await self._answers.claim(self._session_id, answer_id, own)
                    if claim.event_id is not None:
                        # This attempt's own now (perhaps taken over from one whose
                        # gateway died: then it answers under that one's event id).
                        pending.event_id = claim.event_id
                        return None
                    kept = claim.kept
                    assert kept is not None
                    if kept.body is not None:
                        return kept.body
                    if pending.event_id != kept.owner:
                        # A cancel of this message now stops the attempt answering it.
                        pending.event_id = kept.owner
                        if pending.cancelled:
                            await self._backend.cancel(kept.owner)
                    await asyncio.sleep(REPLAY_POLL_S)
        except TimeoutError as exc:
            raise timed_out(timeout) from exc

    async def _release(self, answer_id: str) -> None:
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT_S):
                await self._answers.release(self._session_id, answer_id)
        except (RedisError, OSError, TimeoutError) as exc:
            # A resend then waits for an answer that never comes, and gets `timeout`.
            log.warning(
                "could not give up the claim on %s/%s: %s", self._session_id, answer_id, exc
            )

    async def _keep(self, answer_id: str, owner: str, body: dict[str, Any]) -> None:
        try:
            await self._answers.keep(self._session_id, answer_id, owner, body)
        except (RedisError, OSError) as exc:
            # The learner still gets the answer; only a resend would miss it.
            log.warning("could not keep the answer to %s/%s: %s", self._session_id, answer_id, exc)

    async def _converse(self, pending: Pending, keep_as: str | None) -> None:
        """Publish the message and send its replies; with `keep_as`, keep the final
        response under that id before sending it, so no resend can miss it."""
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
                learner=self._caller.learner,
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
                learner=self._caller.learner,
            )
        async with aclosing(self._backend.converse(event, own_trace=True)) as replies:
            async for reply in replies:
                body = reply_body(reply, pending.received)
                if keep_as is not None and isinstance(reply, ConversationReply):
                    await self._keep(keep_as, pending.event_id, body)
                await self.send(body, pending.id)


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
    telemetry.bind_session(session_id)  # the connection's span, if traced
    gauge = ws.app.state.connections
    gauge.opened()
    metrics.WS_CONNECTIONS.labels("ws").inc()
    try:
        state = ws.app.state
        caller = await ws_auth.authenticate(ws, state.authenticator, state.settings)
        if caller is None:
            return
        try:
            await state.backend.claim(session_id, "websocket", caller.learner)
        except AskError as exc:
            # Another learner's session (1008), or Redis is away (1013: try again).
            close_code = POLICY_VIOLATION if exc.status == 403 else ws_auth.TRY_AGAIN_LATER
            await ws_auth.refuse(ws, exc.code, exc.reason, close_code=close_code)
            return
        await Connection(
            ws,
            state.backend,
            state.settings,
            state.audio_budget,
            AnswerLog(state.redis, state.settings.ws_replay_ttl),
            session_id,
            stream=_wants_stream(ws),
            caller=caller,
        ).run()
    finally:
        gauge.closed()
        metrics.WS_CONNECTIONS.labels("ws").dec()
