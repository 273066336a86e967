"""A caller's utterances and the replies to them, across the webhooks that wait.

Twilio gives up on a webhook after 15 s, and a reply may take longer. So the
exchange runs apart from the webhook that started it: the webhook waits up to
REPLY_DEADLINE, then the caller hears a holding phrase and Twilio is redirected to
`/twilio/reply`, which picks the same reply up. The reply is kept in Redis
(`Keys.twilio_reply`), so the redirect may reach any telephony instance; the
instance that asked serves it from memory. Should that instance die, the reply
(sent to its reply stream) is taken from what the responder kept of the answer.
Nothing is asked twice: the key is claimed before the utterance is published, and
a retried webhook finds the claim.
"""

import asyncio
import hashlib
import logging
import re
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.telephony.settings import TelephonySettings
from shared import phones
from shared.asking import AskError, Conversations, unavailable
from shared.events import DEFAULT_LEARNER, SESSION_ID_PATTERN, UtteranceReceived, new_id
from shared.sessions import stored_answer
from shared.streams import Keys
from shared.tasks import cancel_all

log = logging.getLogger(__name__)

_SESSION_ID = re.compile(SESSION_ID_PATTERN)

# How often a webhook on another instance looks for the reply in Redis.
PICK_UP_POLL_S = 0.1
# What the instance that asked may take beyond REPLY_TIMEOUT to record its failure,
# before another instance stops waiting for it (it may have died).
OWNER_GRACE_S = 3.0
# How long a call is remembered as ended (its status callback comes within seconds).
ENDED_TTL_S = 24 * 3600


class Kept(BaseModel):
    """One utterance's reply as kept in Redis: awaited, said, or given up."""

    model_config = ConfigDict(frozen=True)

    state: Literal["pending", "done", "failed"]
    # When the utterance was asked (unix seconds): the reply is awaited until
    # REPLY_TIMEOUT after it, over however many webhooks.
    asked_at: float
    agent_text: str = ""


def checked_id(value: str | None) -> str | None:
    """`value` if it is a valid session (or event) id, else None: it names Redis keys."""
    return value if value and _SESSION_ID.match(value) else None


def call_session(session_id: str | None, call_sid: str | None) -> str | None:
    """The call's session: the `session_id` of the URL (TwiML's own links carry it),
    else `twilio_{CallSid}`; None when neither is a valid session id."""
    return checked_id(session_id or (f"twilio_{call_sid}" if call_sid else None))


def utterance_id(session_id: str, text: str, idempotency_token: str | None) -> str:
    """The utterance's event id. A webhook Twilio retries carries the same
    I-Twilio-Idempotency-Token and the same speech: it gets the same id, so it finds
    the claim of the first attempt instead of asking again."""
    if not idempotency_token:
        return new_id()
    seed = f"{session_id}\n{idempotency_token}\n{text}".encode()
    return hashlib.sha256(seed).hexdigest()[:32]


class Calls:
    def __init__(
        self, conversations: Conversations, redis: Redis, settings: TelephonySettings
    ) -> None:
        self._conversations = conversations
        self._redis = redis
        self._settings = settings
        # Exchanges of this instance still running, by event id (with their session).
        self._running: dict[str, tuple[str, asyncio.Task[Kept]]] = {}
        # Sessions being ended: kept referenced until they are done.
        self._ending: set[asyncio.Task[None]] = set()

    @property
    def reply_reader_state(self) -> str:
        return self._conversations.reply_reader_state

    @property
    def conversations(self) -> Conversations:
        return self._conversations

    @property
    def redis(self) -> Redis:
        return self._redis

    def _key(self, session_id: str, event_id: str) -> str:
        return Keys.twilio_reply(session_id, event_id)

    async def learner(self, session_id: str, caller: str | None) -> str:
        """The learner the call is for, claimed as the session's owner: fixed at the
        call's first turn, so a number linked during a call is the account's from
        its next call on, and one call's exchanges stay in one archive."""
        try:
            learner = await self._owner(session_id)
            if learner is None:
                open_mode = self._settings.auth_mode == "open"
                learner = await phones.learner_for(self._redis, caller, open_mode=open_mode)
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc
        await self._conversations.claim(session_id, "twilio", learner)
        return learner

    async def _owner(self, session_id: str) -> str | None:
        owner = await self._redis.get(Keys.session_owner(session_id))
        if owner is None:
            return None
        return owner.decode() if isinstance(owner, bytes) else str(owner)

    async def ask(
        self, session_id: str, text: str, *, caller: str | None, idempotency_token: str | None
    ) -> tuple[str, Kept]:
        """Ask for the reply to `text`; its event id, and the reply if it came within
        REPLY_DEADLINE (else a pending Kept: the caller is put on hold)."""
        learner = await self.learner(session_id, caller)
        event_id = utterance_id(session_id, text, idempotency_token)
        asked = Kept(state="pending", asked_at=time.time())
        key = self._key(session_id, event_id)
        try:
            claimed = await self._redis.set(
                key, asked.model_dump_json(), ex=self._settings.twilio_reply_ttl, nx=True
            )
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc
        if not claimed:
            log.info("%s on %s was asked already: a retried webhook", event_id, session_id)
            return event_id, await self.pick_up(session_id, event_id)
        event = self._conversations.text_event(
            session_id, "twilio", text, event_id=event_id, caller=caller, learner=learner
        )
        task = asyncio.create_task(self._exchange(event, key, asked), name=f"twilio-{event_id}")
        self._running[event_id] = (session_id, task)
        task.add_done_callback(lambda _: self._running.pop(event_id, None))
        return event_id, await self._wait(task, asked)

    async def _exchange(self, event: UtteranceReceived, key: str, asked: Kept) -> Kept:
        try:
            reply = await self._conversations.reply_to(event)
            kept = Kept(state="done", asked_at=asked.asked_at, agent_text=reply.agent_text.strip())
        except AskError as exc:
            log.warning("no reply to %s on %s: %s", event.event_id, event.session_id, exc.reason)
            kept = Kept(state="failed", asked_at=asked.asked_at)
        except Exception:
            log.exception("the exchange %s on %s failed", event.event_id, event.session_id)
            kept = Kept(state="failed", asked_at=asked.asked_at)
        try:
            await self._redis.set(key, kept.model_dump_json(), ex=self._settings.twilio_reply_ttl)
        except (RedisError, OSError) as exc:
            # A redirect reaching this instance still gets it, from memory.
            log.warning("could not keep the reply to %s in Redis: %s", event.event_id, exc)
        return kept

    async def _wait(self, task: "asyncio.Task[Kept]", asked: Kept) -> Kept:
        # asyncio.wait neither cancels the exchange when it times out nor when the
        # webhook is cancelled (Twilio hung up): the reply is still kept.
        done, _ = await asyncio.wait({task}, timeout=self._settings.reply_deadline)
        if not done:
            return asked
        if task.cancelled():
            return Kept(state="failed", asked_at=asked.asked_at)
        return task.result()

    async def pick_up(self, session_id: str, event_id: str) -> Kept:
        """The reply to `event_id`, waiting for it up to REPLY_DEADLINE; pending if it
        is still awaited, failed if it never will come (unknown, or too late)."""
        local = self._running.get(event_id)
        if local is not None and local[0] == session_id:
            # Its own timeout (REPLY_TIMEOUT) ends the exchange, so this ends too.
            return await self._wait(local[1], Kept(state="pending", asked_at=time.time()))
        key = self._key(session_id, event_id)
        give_up = time.monotonic() + self._settings.reply_deadline
        while True:
            try:
                raw, answer = await self._redis.mget(key, Keys.exchange_done(event_id))
            except (RedisError, OSError) as exc:
                raise unavailable(exc) from exc
            if raw is None:
                log.warning("no reply is awaited for %s on %s", event_id, session_id)
                return Kept(state="failed", asked_at=0.0)
            kept = Kept.model_validate_json(raw)
            if kept.state != "pending":
                return kept
            answered = stored_answer(answer)
            if answered is not None:
                # Answered, and still pending here: the instance that asked (the one
                # its reply went to) died. The responder kept what it said.
                log.info("the reply to %s on %s is taken from the responder", event_id, session_id)
                return Kept(state="done", asked_at=kept.asked_at, agent_text=answered.agent_text)
            if time.time() > kept.asked_at + self._settings.reply_timeout + OWNER_GRACE_S:
                log.warning("the reply to %s on %s never came", event_id, session_id)
                return Kept(state="failed", asked_at=kept.asked_at)
            if time.monotonic() >= give_up:
                return kept
            await asyncio.sleep(PICK_UP_POLL_S)

    def end_later(self, session_id: str) -> None:
        """End the session as the WebSocket `end` does (summary, context closed),
        once its replies still being written are in: Twilio's status callback is
        answered at once, nobody listens to the summary."""
        task = asyncio.create_task(self._end(session_id), name=f"twilio-end-{session_id}")
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def claim_end(self, session_id: str) -> bool:
        """Whether ending `session_id` falls to the caller of this: a call is ended
        once, by whichever comes first of a goodbye, the relay closing and Twilio's
        status callback (which may reach another instance)."""
        try:
            claimed = await self._redis.set(
                Keys.twilio_ended(session_id), "1", ex=ENDED_TTL_S, nx=True
            )
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc
        return bool(claimed)

    async def _end(self, session_id: str) -> None:
        running = [task for session, task in self._running.values() if session == session_id]
        if running:
            await asyncio.wait(running, timeout=self._settings.reply_timeout)
        try:
            if not await self.claim_end(session_id):
                log.info("call %s was ended already", session_id)
                return
            learner = await self._owner(session_id) or DEFAULT_LEARNER
            summary = await self._conversations.end(session_id, "twilio", learner=learner)
        except (RedisError, OSError) as exc:
            log.warning("could not end %s: %s", session_id, exc)
            return
        except AskError as exc:
            log.warning("could not end %s: %s", session_id, exc.reason)
            return
        except Exception:
            log.exception("could not end %s", session_id)
            return
        log.info("call %s ended (summary of %d characters)", session_id, len(summary.text))

    async def aclose(self) -> None:
        """Stop what still runs (the service is stopping: nobody will hear it)."""
        tasks = [task for _, task in self._running.values()] + list(self._ending)
        await cancel_all(tasks, "call task")
