"""Conversation context in Redis, in v1's layout.

`session:{id}:context` holds a JSON array of the last MAX_CONTEXT_EXCHANGES
exchanges (`{"timestamp", "user", "agent"}`) and `session:{id}:metadata` a JSON
object (`created_at`, `last_activity`, `exchange_count`, `source`), both expiring
after REDIS_TTL. Recording an exchange is one Lua script, so two replicas answering
the same session never lose each other's exchange, and a redelivered utterance is
recorded once.

The same script keeps each answer under `exchange:{event_id}:done`, so a redelivered
utterance is answered with what was sent (and archived) the first time, without
asking the model again.
"""

import json
import time
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel
from redis.asyncio import Redis

from services.responder.tracing import redis_span
from shared.events import Source
from shared.sessions import StoredAnswer, stored_answer
from shared.streams import Keys


class ContextExchange(BaseModel):
    timestamp: str
    user: str
    agent: str


class SessionMetadata(BaseModel):
    created_at: str
    last_activity: str
    exchange_count: int
    source: str


# KEYS: context, metadata, answer marker, active-session index.
# ARGV: exchange JSON, max exchanges, ttl, now (ISO), source, session id, now (epoch),
# the stored answer (JSON), "1" if the exchange joins the context.
_RECORD = """
if not redis.call('SET', KEYS[3], ARGV[8], 'NX', 'EX', ARGV[3]) then
  return 0
end
if ARGV[9] ~= '1' then return 1 end
local context = {}
local raw = redis.call('GET', KEYS[1])
if raw then context = cjson.decode(raw) end
table.insert(context, cjson.decode(ARGV[1]))
while #context > tonumber(ARGV[2]) do table.remove(context, 1) end
redis.call('SET', KEYS[1], cjson.encode(context), 'EX', ARGV[3])
local meta
local raw_meta = redis.call('GET', KEYS[2])
if raw_meta then
  meta = cjson.decode(raw_meta)
else
  meta = {created_at = ARGV[4], exchange_count = 0, source = ARGV[5]}
end
meta['last_activity'] = ARGV[4]
meta['exchange_count'] = meta['exchange_count'] + 1
redis.call('SET', KEYS[2], cjson.encode(meta), 'EX', ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[7], ARGV[6])
return 1
"""


@dataclass(frozen=True)
class Recalled:
    # The answer this utterance already got (it is being delivered again).
    earlier: StoredAnswer | None
    # The last few exchanges of the session, and how many it has had in all.
    context: list[ContextExchange]
    exchanges: int
    # Its asker cancelled the reply before it was begun.
    cancelled: bool


def iso_z(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class ContextStore:
    def __init__(self, redis: Redis, *, max_exchanges: int, ttl_s: int) -> None:
        self._redis = redis
        self._max = max_exchanges
        self._ttl = ttl_s
        self._record = redis.register_script(_RECORD)

    async def load(self, session_id: str) -> list[ContextExchange]:
        raw = await self._redis.get(Keys.context(session_id))
        return [ContextExchange.model_validate(x) for x in json.loads(raw or "[]")]

    async def metadata(self, session_id: str) -> SessionMetadata | None:
        raw = await self._redis.get(Keys.metadata(session_id))
        return SessionMetadata.model_validate_json(raw) if raw else None

    async def record(
        self,
        *,
        session_id: str,
        event_id: str,
        source: Source,
        user: str,
        agent: str,
        at: datetime,
        in_context: bool = True,
        cancelled: bool = False,
    ) -> bool:
        """Keep the answer and append the exchange to the context (unless not
        `in_context`); False if this utterance was already answered."""
        stamp = iso_z(at)
        exchange = json.dumps({"timestamp": stamp, "user": user, "agent": agent})
        answer = StoredAnswer(agent_text=agent, at=at, cancelled=cancelled).model_dump_json()
        with redis_span("context.write", session_id, "EVALSHA") as span:
            added = await self._record(
                keys=[
                    Keys.context(session_id),
                    Keys.metadata(session_id),
                    Keys.exchange_done(event_id),
                    Keys.ACTIVE_SESSIONS,
                ],
                args=[
                    exchange,
                    self._max,
                    self._ttl,
                    stamp,
                    source,
                    session_id,
                    time.time(),
                    answer,
                    "1" if in_context else "0",
                ],
            )
            if span.is_recording():
                # Not recorded: another delivery of the utterance was answered first.
                span.set_attributes(
                    {"lva.context.in_context": in_context, "lva.recorded": bool(added)}
                )
        return bool(added)

    async def answered(self, event_id: str) -> StoredAnswer | None:
        """The answer an utterance already got, if it was answered before."""
        return stored_answer(await self._redis.get(Keys.exchange_done(event_id)))

    async def recall(self, session_id: str, event_id: str) -> "Recalled":
        """What answering an utterance needs, in one round trip."""
        with redis_span("context.read", session_id, "MGET") as span:
            marker, raw, meta, cancel = await self._redis.mget(
                Keys.exchange_done(event_id),
                Keys.context(session_id),
                Keys.metadata(session_id),
                Keys.cancel(event_id),
            )
            context = [ContextExchange.model_validate(x) for x in json.loads(raw or "[]")]
            metadata = SessionMetadata.model_validate_json(meta) if meta else None
            recalled = Recalled(
                earlier=stored_answer(marker),
                context=context,
                exchanges=metadata.exchange_count if metadata else len(context),
                cancelled=cancel is not None,
            )
            if span.is_recording():
                span.set_attributes(
                    {
                        "lva.context.exchanges": len(context),
                        "lva.context.session_exchanges": recalled.exchanges,
                        "lva.answered_before": marker is not None,
                        "lva.cancel_requested": recalled.cancelled,
                    }
                )
        return recalled

    async def end(self, session_id: str) -> list[ContextExchange]:
        """Return the session's context and forget the session (v1 end_session)."""
        context = await self.load(session_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(Keys.context(session_id), Keys.metadata(session_id))
            pipe.zrem(Keys.ACTIVE_SESSIONS, session_id)
            await pipe.execute()
        return context
