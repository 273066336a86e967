"""Which learner a phone caller is, and linking a phone to a learner's account.

A caller is known only by the keyed hash of their number (services.telephony.
privacy). Until linked, each number is a learner of its own, `phone:<hash>`, with
its own archive. To link it, the caller asks for a code on the call ("link my
phone"); telephony speaks a one-time code of CODE_DIGITS digits that is good for
PHONE_LINK_CODE_TTL_S; the learner, signed in on the PWA or a script, sends it to
`POST /api/phone-link`, and from then on every call from that number is theirs:
one archive for the phone and the browser. Knowing the code proves the call; the
bearer token proves the account.

Guessing is bounded: a code is redeemed once (GETDEL), lives minutes, and each
learner may try PHONE_LINK_TRIES a minute.
"""

import secrets

from redis.asyncio import Redis

from shared.events import DEFAULT_LEARNER
from shared.streams import Keys

CODE_DIGITS = 6
UNLINKED_PREFIX = "phone:"
# Codes are drawn until one is free; with 10^6 of them and minutes of life, a
# collision is rare and a few draws always suffice.
_DRAWS = 8

# One window per learner per minute: INCR, and start the window on the first try.
_TRY = """
local tries = redis.call('INCR', KEYS[1])
if tries == 1 then
    redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return {tries, redis.call('TTL', KEYS[1])}
"""
TRY_WINDOW_S = 60


def unlinked_learner(caller_hash: str) -> str:
    """The learner a number is until it is linked to an account."""
    return f"{UNLINKED_PREFIX}{caller_hash}"


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


async def learner_for(redis: Redis, caller_hash: str | None, *, open_mode: bool) -> str:
    """The learner a call from the number with `caller_hash` belongs to: in open
    mode everyone's (the one local learner, as on the gateway); otherwise the
    account it is linked to, or the number's own learner. A call without a number
    (withheld) is the local learner's in open mode and nobody's account otherwise."""
    if open_mode:
        return DEFAULT_LEARNER
    if caller_hash is None:
        return unlinked_learner("withheld")
    linked = _text(await redis.get(Keys.phone_link(caller_hash)))
    return linked or unlinked_learner(caller_hash)


async def new_code(redis: Redis, caller_hash: str, ttl_s: int) -> str:
    """A fresh one-time code that links `caller_hash` when redeemed within `ttl_s`."""
    for _ in range(_DRAWS):
        code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        if await redis.set(Keys.phone_code(code), caller_hash, ex=ttl_s, nx=True):
            return code
    raise RuntimeError("no free phone link code after several draws")


async def redeem(redis: Redis, code: str, learner: str) -> str | None:
    """Link the number `code` was spoken to, to `learner`; its hash, or None when
    the code is unknown, used or expired."""
    caller_hash = _text(await redis.getdel(Keys.phone_code(code)))
    if caller_hash is None:
        return None
    await redis.set(Keys.phone_link(caller_hash), learner)
    return caller_hash


async def may_try(redis: Redis, learner: str, tries_per_minute: int) -> int | None:
    """None if `learner` may try a code now; else the seconds until they may."""
    result = await redis.eval(_TRY, 1, Keys.phone_link_tries(learner), TRY_WINDOW_S)
    tries, ttl = int(result[0]), int(result[1])
    return None if tries <= tries_per_minute else max(1, ttl)


def is_code(value: str) -> bool:
    return len(value) == CODE_DIGITS and value.isascii() and value.isdigit()
