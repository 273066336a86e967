"""Answers to WebSocket messages that carry an `id`, kept so a resend is not answered twice.

A PWA keeps what it sent in an outbox until it is answered, and sends it again with
the same `id` after a dropped connection; the drop may have come after the gateway
took the message, so a resend can be a message that is being, or was, answered.
The attempt that starts answering an id claims `Keys.ws_answer(session, id)` (SET NX)
and, once the answer is known, keeps its body there. A resend that finds the key
claimed publishes nothing: it waits for that body and sends it again.

While an answer is under way its claim lives only `CLAIM_TTL_S`, renewed by the
attempt answering it: if that gateway dies, the claim lapses within seconds and a
resend waiting for it claims the id itself, instead of waiting for an answer that
will never be kept. A kept answer lives `ttl` seconds.
"""

from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis

from shared.streams import Keys

# Seconds a claim outlives the last sign of the attempt answering it.
CLAIM_TTL_S = 15
# How often that attempt renews its claim: a few renewals fit in one claim's life.
RENEW_EVERY_S = 5.0

# Claim the key, or (taken already) return what it holds: one round trip, and no
# moment between the two where the claim could vanish unseen. A claim is made
# under the event id the id was first claimed with (KEYS[2]): an attempt that takes
# over from one whose gateway died answers as that one, so the responder, which
# may still be answering it, answers once and the archive stores it once.
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held then return {0, held} end
local event = redis.call('GET', KEYS[2])
if not event then
  event = ARGV[1]
  redis.call('SET', KEYS[2], event, 'EX', ARGV[3])
end
redis.call('SET', KEYS[1], cjson.encode({owner = event, body = cjson.null}), 'EX', ARGV[2])
return {1, event}
"""

# Renew a claim only while it is still the attempt's own and not yet answered.
_RENEW = """
local held = redis.call('GET', KEYS[1])
if not held then return 0 end
local kept = cjson.decode(held)
if kept['owner'] ~= ARGV[1] or kept['body'] ~= cjson.null then return 0 end
return redis.call('EXPIRE', KEYS[1], ARGV[2])
"""


class KeptAnswer(BaseModel):
    """What `Keys.ws_answer` holds."""

    # The event id of the attempt that claimed it: a cancel sent while a resend
    # waits is forwarded there, and a claim whose reply Redis lost (and the client
    # sent again) is known as this attempt's own.
    owner: str
    # The body the client was sent (without `id`); None while it is being answered.
    body: dict[str, Any] | None = None


class Claim(BaseModel):
    """What claiming an id gave: the event id to answer under, or another's claim."""

    event_id: str | None = None
    kept: KeptAnswer | None = None


class AnswerLog:
    def __init__(self, redis: Redis, ttl: int) -> None:
        self._redis = redis
        self._ttl = ttl
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)

    async def claim(self, session_id: str, answer_id: str, owner: str) -> Claim:
        """Claim answering `answer_id` for the attempt `owner`: the event id to answer
        under once it is this attempt's (`owner`, or that of an attempt whose claim
        lapsed), else the claim found (with its body once answered)."""
        keys = [Keys.ws_answer(session_id, answer_id), Keys.ws_event(session_id, answer_id)]
        mine, found = await self._claim(keys=keys, args=[owner, CLAIM_TTL_S, self._ttl])
        if mine:
            return Claim(event_id=found.decode() if isinstance(found, bytes) else str(found))
        kept = KeptAnswer.model_validate_json(found)
        if kept.owner == owner:
            return Claim(event_id=owner)
        return Claim(kept=kept)

    async def renew(self, session_id: str, answer_id: str, owner: str) -> bool:
        """Keep `owner`'s claim alive another `CLAIM_TTL_S`; False if it is not its own."""
        key = Keys.ws_answer(session_id, answer_id)
        return bool(await self._renew(keys=[key], args=[owner, CLAIM_TTL_S]))

    async def keep(self, session_id: str, answer_id: str, owner: str, body: dict[str, Any]) -> None:
        """Keep the answer `owner` claimed for, `ttl` seconds from now."""
        kept = KeptAnswer(owner=owner, body=body).model_dump_json()
        # XX: a claim that lapsed meanwhile (and may be another attempt's now) stays so.
        await self._redis.set(Keys.ws_answer(session_id, answer_id), kept, xx=True, ex=self._ttl)

    async def release(self, session_id: str, answer_id: str) -> None:
        """Give up a claim: the attempt failed, and a resend must be answered afresh."""
        await self._redis.delete(
            Keys.ws_answer(session_id, answer_id), Keys.ws_event(session_id, answer_id)
        )
