"""Whose a session is: the first learner to talk in it, for SESSION_OWNER_TTL_S
after they last did.

A session's context in Redis is keyed by its id alone (v1's
`session:{id}:context`), so a second learner using the same id would be answered
with the first one's words as context, and would end (summarise) their session.
The gateway and telephony claim the session for the caller before they publish
anything about it; another learner's claim is refused (403 `session_taken`). The
archive needs no claim: it answers every query for its learner in SQL.

The claim outlives the context (REDIS_TTL) on purpose: once it lapses another
learner may take the id, and by then nothing of the first one's is left in Redis.
"""

from redis.asyncio import Redis

from shared.streams import Keys

# One round trip that either takes the session, renews the caller's own claim, or
# says whose it is. Returns the owner after the call.
_CLAIM = """
local owner = redis.call('GET', KEYS[1])
if not owner then
    redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
    return ARGV[1]
end
if owner == ARGV[1] then
    redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return owner
"""


async def claim(redis: Redis, session_id: str, learner: str, ttl_s: int) -> str:
    """Take `session_id` for `learner` (or renew their claim) and return its owner:
    `learner` unless another learner holds it."""
    owner = await redis.eval(_CLAIM, 1, Keys.session_owner(session_id), learner, ttl_s)
    return owner.decode() if isinstance(owner, bytes) else str(owner)
