"""Messages the workers gave up on: kept in `dead.letters`, told to their asker,
counted per stream, and listed, replayed or dropped by an operator.

A reclaimer moves an entry here after MAX_DELIVERIES failed deliveries
(`shared.delivery`). The entry keeps the original fields (FastStream's message,
headers and trace context included) and says where it came from, so a replay puts
the very same message back on its stream. Moving, replaying and dropping each
update `dead.letters.counts` in the same transaction, so the counts are what the
stream holds, without reading it.
"""

import json
import logging
import time
from collections.abc import Sequence
from typing import Any, cast

from faststream.redis.parser import BinaryMessageFormatV1
from pydantic import BaseModel
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared.events import ErrorReply, new_id
from shared.replies import ReplySender
from shared.streams import DEAD_LETTERS, Keys

log = logging.getLogger(__name__)

FAILED_FIELD = b"lva-failed"
STREAM_FIELD = b"lva-stream"
GROUP_FIELD = b"lva-group"
ENTRY_FIELD = b"lva-entry"
AT_FIELD = b"lva-dead-at"
REASON_FIELD = b"lva-reason"
# What the dead-letter stream adds to an entry; a replay takes it off again.
OWN_FIELDS = (FAILED_FIELD, STREAM_FIELD, GROUP_FIELD, ENTRY_FIELD, AT_FIELD, REASON_FIELD)
_DATA = b"__data__"
_Entries = list[tuple[bytes, dict[bytes, bytes]]]

GAVE_UP = (
    "this message could not be handled after {failures} attempts; it was kept for an "
    "operator. Please try again"
)


class DeadLetter(BaseModel):
    """One entry of `dead.letters`, as an operator reads it."""

    id: str
    stream: str
    group: str
    entry: str
    failures: int
    # Why it was moved at once, for a message no delivery could make readable.
    reason: str | None
    # Unix seconds when it was moved here (None for entries of older versions).
    dead_at: float | None
    # The request it answers and who waits for it, if the message says.
    request_id: str | None
    reply_to: str | None
    # The message's body (JSON as published), or the raw fields' names if unreadable.
    body: str


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def message_body(fields: dict[bytes, bytes]) -> bytes | None:
    """The body FastStream published in these stream fields, None if it is unreadable."""
    raw = fields.get(_DATA)
    if raw is None:
        return None
    try:
        body, _headers = BinaryMessageFormatV1.parse(raw)
    except (ValueError, TypeError):
        return None
    return body


def asker(fields: dict[bytes, bytes]) -> tuple[str, str, str | None] | None:
    """(request id, reply stream, session id) of a message someone waits on."""
    body = message_body(fields)
    if body is None:
        return None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    reply_to = data.get("reply_to")
    # Events are answered by their event id, archive queries by their query id.
    request_id = data.get("event_id") or data.get("query_id")
    if not isinstance(reply_to, str) or not reply_to or not isinstance(request_id, str):
        return None
    session_id = data.get("session_id")
    return request_id, reply_to, session_id if isinstance(session_id, str) else None


def bury(
    pipe: Pipeline,
    fields: dict[bytes, bytes],
    *,
    stream: str,
    group: str,
    entry_id: bytes,
    failures: int,
    reason: str | None = None,
) -> None:
    """Queue on `pipe` the move of one entry to `dead.letters` (and its count).

    The stream is never trimmed: what is in it waits for an operator, and it grows
    only with failures, which its count (and the metric) shows."""
    dead = {
        **fields,
        FAILED_FIELD: str(failures).encode(),
        STREAM_FIELD: stream.encode(),
        GROUP_FIELD: group.encode(),
        ENTRY_FIELD: entry_id,
        AT_FIELD: f"{time.time():.3f}".encode(),
    }
    if reason:
        dead[REASON_FIELD] = reason[:500].encode()
    pipe.xadd(DEAD_LETTERS, dead)  # type: ignore[arg-type]
    pipe.hincrby(Keys.DEAD_LETTER_COUNTS, stream, 1)


async def bury_unreadable(
    redis: Redis, body: Any, headers: dict[str, Any], *, stream: str, group: str, reason: str
) -> None:
    """Move a message its worker could not read (it fails the same way however
    often it is delivered) to `dead.letters` at once, as FastStream would publish it."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    data = await BinaryMessageFormatV1.encode(
        message=raw,
        reply_to=None,
        headers={k: str(v) for k, v in headers.items()},
        correlation_id=str(headers.get("correlation_id") or new_id()),
    )
    async with redis.pipeline(transaction=True) as pipe:
        bury(
            pipe, {_DATA: data}, stream=stream, group=group, entry_id=b"", failures=1, reason=reason
        )
        await pipe.execute()


async def tell_asker(sender: ReplySender, fields: dict[bytes, bytes], failures: int) -> bool:
    """Answer the message's asker with an error now, rather than let them wait for
    their deadline; False when nobody waits for it."""
    found = asker(fields)
    if found is None:
        return False
    request_id, reply_to, session_id = found
    reply = ErrorReply(
        in_reply_to=request_id,
        session_id=session_id,
        code="dead_letter",
        message=GAVE_UP.format(failures=failures),
    )
    return await sender.send(reply, reply_to)


def read(entry_id: bytes | str, fields: dict[bytes, bytes]) -> DeadLetter:
    found = asker(fields)
    body = message_body(fields)
    at = fields.get(AT_FIELD)
    try:
        failures = int(fields.get(FAILED_FIELD, b"0"))
    except ValueError:
        failures = 0
    return DeadLetter(
        id=_text(entry_id),
        stream=_text(fields.get(STREAM_FIELD)),
        group=_text(fields.get(GROUP_FIELD)),
        entry=_text(fields.get(ENTRY_FIELD)),
        failures=failures,
        reason=_text(fields.get(REASON_FIELD)) or None,
        dead_at=float(at) if at else None,
        request_id=found[0] if found else None,
        reply_to=found[1] if found else None,
        body=_text(body) if body is not None else ", ".join(_text(k) for k in fields),
    )


async def listing(
    redis: Redis, *, stream: str | None = None, count: int = 100, after: str = "-"
) -> list[DeadLetter]:
    """Up to `count` dead letters, oldest first, from `stream` only if given."""
    found: list[DeadLetter] = []
    start = after
    while len(found) < count:
        entries = cast(
            _Entries, await redis.xrange(DEAD_LETTERS, min=start, max="+", count=max(count, 100))
        )
        if not entries:
            break
        for entry_id, fields in entries:
            letter = read(entry_id, fields)
            if stream is None or letter.stream == stream:
                found.append(letter)
                if len(found) == count:
                    break
        start = "(" + _text(entries[-1][0])
    return found


async def _entries(redis: Redis, ids: Sequence[str]) -> list[tuple[str, dict[bytes, bytes]]]:
    found = []
    for entry_id in ids:
        entries = cast(_Entries, await redis.xrange(DEAD_LETTERS, min=entry_id, max=entry_id))
        if entries:
            found.append((entry_id, entries[0][1]))
    return found


async def replay(redis: Redis, ids: Sequence[str], *, maxlen: int) -> list[str]:
    """Put these dead letters back on the streams they came from, as new messages
    with no failures; return the ids replayed (unknown ids are skipped)."""
    done = []
    for entry_id, fields in await _entries(redis, ids):
        stream = _text(fields.get(STREAM_FIELD))
        if not stream:
            log.warning("dead letter %s says no stream; left in place", entry_id)
            continue
        original: dict[Any, Any] = {k: v for k, v in fields.items() if k not in OWN_FIELDS}
        async with redis.pipeline(transaction=True) as pipe:
            pipe.xadd(stream, original, maxlen=maxlen)
            pipe.xdel(DEAD_LETTERS, entry_id)
            pipe.hincrby(Keys.DEAD_LETTER_COUNTS, stream, -1)
            await pipe.execute()
        done.append(entry_id)
    return done


async def drop(redis: Redis, ids: Sequence[str]) -> list[str]:
    """Delete these dead letters for good; return the ids dropped."""
    done = []
    for entry_id, fields in await _entries(redis, ids):
        stream = _text(fields.get(STREAM_FIELD))
        async with redis.pipeline(transaction=True) as pipe:
            pipe.xdel(DEAD_LETTERS, entry_id)
            if stream:
                pipe.hincrby(Keys.DEAD_LETTER_COUNTS, stream, -1)
            await pipe.execute()
        done.append(entry_id)
    return done


async def counts(redis: Redis) -> dict[str, int]:
    """Dead letters waiting, per stream they came from (streams with none left out)."""
    raw = await redis.hgetall(Keys.DEAD_LETTER_COUNTS)
    found = {_text(k): int(v) for k, v in raw.items()}
    return {stream: n for stream, n in sorted(found.items()) if n > 0}
