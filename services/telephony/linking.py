"""A caller asks to link their phone to their account, and hears a one-time code.

"Link my phone" is answered here, not by the companion: the model never sees the
request nor the code, and nothing of it is archived. The learner then sends the
code from the app, signed in (`POST /api/phone-link`, shared.phones).
"""

import re

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.telephony.settings import TelephonySettings
from shared import phones
from shared.asking import unavailable

# What a caller may say, as Twilio's speech recognition writes it down.
_ASKS = re.compile(r"\b(link|connect|pair)\s+(my|this)\s+(phone|number|call)\b")

OPEN_MODE = (
    "There is no account to link: this companion runs without sign-in, so your calls "
    "and the app already share one archive."
)
WITHHELD = (
    "I can't link this call because your number is withheld. "
    "Call again without hiding it, and ask me once more."
)


def asks_to_link(speech: str) -> bool:
    return _ASKS.search(speech.lower()) is not None


def code_phrase(code: str, ttl_s: int) -> str:
    # Digit by digit, with pauses, twice: a caller writes it down as it is spoken.
    digits = ", ".join(code)
    minutes = max(1, ttl_s // 60)
    return (
        f"Your link code is {digits}. Once more: {digits}. "
        f"Enter it in the app within {minutes} minutes, and from your next call on, "
        "your calls and the app share one archive."
    )


async def link_reply(redis: Redis, settings: TelephonySettings, caller: str | None) -> str:
    """What the caller hears when they ask to link: a fresh code, or why not."""
    if settings.auth_mode == "open":
        return OPEN_MODE
    if caller is None:
        return WITHHELD
    try:
        code = await phones.new_code(redis, caller, settings.phone_link_code_ttl_s)
    except (RedisError, OSError) as exc:
        raise unavailable(exc) from exc
    return code_phrase(code, settings.phone_link_code_ttl_s)
