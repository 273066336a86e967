"""ConversationRelay mode: one WebSocket per call, the reply spoken as it is written.

Twilio does the speech both ways: it sends what the caller said as `prompt`
messages and speaks the `text` tokens we send, as they come, so the caller hears
the first words while the rest of the reply is still being written. The caller
may talk over a reply (`interruptible="any"`): Twilio stops speaking and sends
`interrupt` with what it had said; the rest of the reply is cancelled (the model
stops) and the archive keeps what the caller heard.

Prompts are answered one at a time, in order: a conversation's context is a
sequence. When the caller says goodbye, the reply is followed by the session's
summary, and the call ends once both are likely heard.
"""

import asyncio
import contextlib
import json
import logging
from contextlib import aclosing
from dataclasses import dataclass

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ValidationError

from services.telephony import linking
from services.telephony.calls import Calls, call_session, checked_id
from services.telephony.heard import heard_part
from services.telephony.privacy import caller_hash
from services.telephony.relay_protocol import (
    KNOWN_TYPES,
    Dtmf,
    EndSession,
    Interrupt,
    Prompt,
    RelayError,
    Setup,
    TextToken,
    incoming_adapter,
)
from services.telephony.settings import TelephonySettings
from services.telephony.signatures import Refused, Signatures
from services.telephony.twiml import APOLOGY, NOT_HEARD
from shared import metrics, telemetry
from shared.asking import AskError
from shared.events import ConversationReply, DeltaReply, ReplyInterrupted
from shared.streams import CALL_EVENTS
from shared.tasks import cancel_all

log = logging.getLogger(__name__)

router = APIRouter()

# Prompts waiting while a reply is spoken; Twilio sends one per turn, so more
# than this is not a caller talking.
MAX_WAITING_PROMPTS = 4
# Twilio's voices speak about this many words a second.
SPOKEN_WORDS_PER_S = 2.5
GOODBYE = "Goodbye, and thanks for thinking out loud with me."
# Close codes: the policy was broken (no setup, a foreign call), a message too big.
POLICY_VIOLATION = 1008
TOO_BIG = 1009


@dataclass
class Turn:
    """One reply on its way to the caller."""

    event_id: str
    # The text sent to Twilio so far, which it speaks in order.
    sent: str = ""
    # A token with `last` went: Twilio has the whole reply.
    closed: bool = False
    interrupted: bool = False
    finished: bool = False


class Closed(Exception):
    """The WebSocket is closed (Twilio hung up, or we refused it)."""


class RelayCall:
    def __init__(
        self, websocket: WebSocket, calls: Calls, settings: TelephonySettings, hint: str | None
    ) -> None:
        self._ws = websocket
        self._calls = calls
        self._conversations = calls.conversations
        self._settings = settings
        # The session the TwiML's URL named (signed with it): the setup must match.
        self._hint = hint
        self.session_id = ""
        self._caller: str | None = None
        self._prompts: asyncio.Queue[str] = asyncio.Queue(maxsize=MAX_WAITING_PROMPTS)
        # The latest reply whose words went to Twilio: the one an interrupt cuts.
        self._turn: Turn | None = None
        self._send_lock = asyncio.Lock()
        self._ended = False
        self._silent = 0

    async def run(self) -> None:
        try:
            if not await self._setup():
                return
        except Closed:
            return
        speaker = asyncio.create_task(self._speak_forever(), name=f"relay-{self.session_id}")
        try:
            await self._listen()
        except Closed:
            pass
        finally:
            await self._stop_reply()
            await cancel_all([speaker], "relay speaker")
            if self.session_id:
                self._calls.end_later(self.session_id)

    async def _receive(self) -> str:
        try:
            text = await self._ws.receive_text()
        except (WebSocketDisconnect, RuntimeError, KeyError) as exc:
            # KeyError/RuntimeError: a binary frame, or a receive after the close.
            raise Closed from exc
        if len(text) > self._settings.relay_max_message_bytes:
            log.warning("%s: a relay message of %d bytes, closed", self.session_id, len(text))
            await self._close(TOO_BIG, "message too big")
            raise Closed
        return text

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(RuntimeError, OSError):
            await self._ws.close(code=code, reason=reason)

    async def _setup(self) -> bool:
        """Wait for Twilio's `setup`: the call it is about, and who calls."""
        try:
            async with asyncio.timeout(self._settings.relay_setup_timeout):
                raw = await self._receive()
        except TimeoutError:
            log.warning("relay: no setup within %g s, closed", self._settings.relay_setup_timeout)
            await self._close(POLICY_VIOLATION, "no setup message")
            return False
        try:
            setup = Setup.model_validate_json(raw)
        except ValidationError:
            log.warning("relay: the first message is not a setup, closed")
            await self._close(POLICY_VIOLATION, "the first message must be setup")
            return False
        session = call_session(None, setup.call_sid)
        if session is None or (self._hint is not None and self._hint != session):
            # A handshake signed for one call must not speak for another.
            log.warning("relay: the setup's call does not match the URL's session, closed")
            await self._close(POLICY_VIOLATION, "the call does not match the URL")
            return False
        self.session_id = session
        telemetry.bind_session(session)  # the connection's span, if traced
        self._caller = caller_hash(setup.from_, self._settings.hash_secret)
        log.info("relay call %s from caller %s", session, self._caller or "unknown")
        return True

    async def _listen(self) -> None:
        while True:
            raw = await self._receive()
            kind = _type_of(raw)
            known = kind if kind in KNOWN_TYPES else "other"
            metrics.WS_MESSAGES.labels("relay", "received", known).inc()
            try:
                message = incoming_adapter.validate_json(raw)
            except ValidationError as exc:
                if kind in KNOWN_TYPES:
                    log.warning("%s: unreadable %s message: %s", self.session_id, kind, exc)
                else:
                    # Twilio adds message types; an old service must not fail on them.
                    log.info("%s: relay message of type %r ignored", self.session_id, kind)
                continue
            if isinstance(message, Prompt):
                self._prompted(message)
            elif isinstance(message, Interrupt):
                await self._interrupted(message)
            elif isinstance(message, Dtmf):
                log.info(
                    "%s: the caller pressed %r (no menu: ignored)", self.session_id, message.digit
                )
            elif isinstance(message, RelayError):
                log.warning("%s: Twilio reports: %s", self.session_id, message.description)
            else:
                log.warning("%s: a second setup message ignored", self.session_id)

    def _prompted(self, prompt: Prompt) -> None:
        if not prompt.last:
            return  # a partial prompt: the whole one follows
        if self._ended:
            log.info("%s: spoke after the goodbye; the call is ending", self.session_id)
            return
        text = " ".join(prompt.voice_prompt.split())[: self._settings.max_text_chars]
        try:
            self._prompts.put_nowait(text)
        except asyncio.QueueFull:
            log.warning(
                "%s: %d prompts wait already, one dropped", self.session_id, MAX_WAITING_PROMPTS
            )

    async def _speak_forever(self) -> None:
        while not self._ended:
            text = await self._prompts.get()
            if not text:
                await self._not_heard()
                continue
            self._silent = 0
            if linking.asks_to_link(text):
                await self._link()
            else:
                await self._answer(text)

    async def _not_heard(self) -> None:
        self._silent += 1
        if self._silent >= self._settings.max_reprompts:
            log.info("%s: nothing heard %d times, ending the call", self.session_id, self._silent)
            await self._send(TextToken(token=GOODBYE, last=True))
            await self._end("silence", GOODBYE)
            return
        await self._send(TextToken(token=NOT_HEARD, last=True))

    async def _link(self) -> None:
        try:
            spoken = await linking.link_reply(self._calls.redis, self._settings, self._caller)
        except AskError as exc:
            log.warning("%s: no link code: %s", self.session_id, exc.reason)
            spoken = APOLOGY
        log.info("%s: the caller asked to link their phone", self.session_id)
        await self._send(TextToken(token=spoken, last=True))

    async def _answer(self, text: str) -> None:
        try:
            learner = await self._calls.learner(self.session_id, self._caller)
        except AskError as exc:
            log.warning("%s: no learner for the call: %s", self.session_id, exc.reason)
            await self._send(TextToken(token=APOLOGY, last=True))
            return
        event = self._conversations.text_event(
            self.session_id, "twilio", text, stream=True, caller=self._caller, learner=learner
        )
        turn = Turn(event.event_id)
        self._turn = turn
        reply: ConversationReply | None = None
        try:
            turns = self._conversations.converse(event, own_trace=True)
            async with aclosing(turns) as replies:
                async for piece in replies:
                    if isinstance(piece, DeltaReply):
                        await self._say(turn, piece.text, last=piece.last)
                    elif isinstance(piece, ConversationReply):
                        reply = piece
        except AskError as exc:
            log.warning("%s: no reply to %s: %s", self.session_id, event.event_id, exc.reason)
            if not turn.interrupted:
                # Words already spoken are not taken back; the apology follows them.
                await self._say(turn, (" " if turn.sent else "") + APOLOGY, last=True)
            return
        finally:
            turn.finished = True
        if turn.interrupted or reply is None:
            return
        if not turn.closed:
            # No piece carried `last` (a reply without pieces, say): end it here.
            await self._say(turn, "", last=True)
        if reply.intent == "end_conversation":
            await self._goodbye(reply.agent_text)

    async def _say(self, turn: Turn, text: str, *, last: bool) -> None:
        if turn.interrupted or (not text and not last):
            return
        turn.sent += text
        turn.closed = turn.closed or last
        await self._send(TextToken(token=text, last=last))

    async def _send(self, message: BaseModel) -> None:
        data = message.model_dump_json(by_alias=True)
        async with self._send_lock:
            try:
                await self._ws.send_text(data)
            except (WebSocketDisconnect, RuntimeError, OSError) as exc:
                raise Closed from exc
        metrics.WS_MESSAGES.labels("relay", "sent", str(getattr(message, "type", "?"))).inc()

    async def _interrupted(self, interrupt: Interrupt) -> None:
        turn = self._turn
        if turn is None:
            return  # the welcome greeting: no reply to cut
        spoken = interrupt.utterance_until_interrupt
        heard = heard_part(turn.sent, spoken)
        log.info(
            "%s: the caller talked over the reply to %s after %s ms",
            self.session_id,
            turn.event_id,
            interrupt.duration_until_interrupt_ms,
        )
        if turn.interrupted:
            return
        turn.interrupted = True
        try:
            if not turn.finished:
                await self._conversations.cancel(turn.event_id)
            await self._conversations.tell(
                CALL_EVENTS,
                ReplyInterrupted(
                    session_id=self.session_id,
                    source="twilio",
                    in_reply_to=turn.event_id,
                    heard_text=heard,
                    heard_ms=interrupt.duration_until_interrupt_ms,
                ),
            )
        except AskError as exc:
            log.warning(
                "%s: the cut of %s is not kept: %s", self.session_id, turn.event_id, exc.reason
            )

    async def _goodbye(self, reply_text: str) -> None:
        """The caller said goodbye: the summary, then the call ends."""
        self._ended = True
        summary = ""
        try:
            if await self._calls.claim_end(self.session_id):
                summary = (await self._conversations.end(self.session_id, "twilio")).text.strip()
        except AskError as exc:
            log.warning("%s: no summary: %s", self.session_id, exc.reason)
        if summary:
            await self._send(TextToken(token=summary, last=True))
        await self._end("goodbye", f"{reply_text} {summary}")

    async def _end(self, reason: str, spoken: str) -> None:
        self._ended = True
        # Twilio ends the session when it gets `end`, speech still queued or not.
        wait = min(len(spoken.split()) / SPOKEN_WORDS_PER_S, self._settings.relay_goodbye_wait_max)
        await asyncio.sleep(wait)
        handoff = json.dumps({"reason": reason, "session_id": self.session_id})
        await self._send(EndSession(handoff_data=handoff))
        log.info("%s: the call is ended (%s)", self.session_id, reason)

    async def _stop_reply(self) -> None:
        """The WebSocket closed: stop the model writing a reply nobody hears."""
        turn = self._turn
        if turn is not None and not turn.finished and not turn.interrupted:
            with contextlib.suppress(AskError):
                await self._conversations.cancel(turn.event_id)


def _type_of(raw: str) -> str:
    try:
        value = json.loads(raw)
    except ValueError:
        return "(not JSON)"
    return str(value.get("type")) if isinstance(value, dict) else "(not an object)"


@router.websocket("/twilio/relay")
async def relay(websocket: WebSocket) -> None:
    signatures: Signatures = websocket.app.state.signatures
    try:
        signatures.check_websocket(websocket)
    except Refused as exc:
        # Closed before it is accepted: the handshake gets 403, nothing is read.
        await websocket.close(code=POLICY_VIOLATION, reason=exc.reason)
        return
    await websocket.accept()
    hint = checked_id(websocket.query_params.get("session_id"))
    metrics.WS_CONNECTIONS.labels("relay").inc()
    try:
        state = websocket.app.state
        await RelayCall(websocket, state.calls, state.settings, hint).run()
    finally:
        metrics.WS_CONNECTIONS.labels("relay").dec()
