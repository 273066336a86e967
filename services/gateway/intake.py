"""Taking in large input without stalling the event loop, and within a memory budget.

A 25 MB clip arrives as 33 MB of base64 inside JSON. Parsing and decoding it on the
event loop would stop every other connection of the gateway for about 160 ms, so
both run in a worker thread; the decoding goes in pieces that each give the
interpreter back to the loop. Parsing the JSON itself is one call that holds the
interpreter (no JSON parser releases it): about 25 ms for a 33 MB message with
pydantic's parser, the fastest installed.

Decoded clips stay in the gateway's memory until their bytes are handed to Redis;
`AudioBudget` caps how much of that all connections together may hold.
"""

import asyncio
import json
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic_core import from_json

from services.gateway import validation
from services.gateway.validation import InputError

M = TypeVar("M", bound=BaseModel)

# Below this size parsing or decoding takes well under a millisecond: a thread
# hop would cost more than it saves.
INLINE_LIMIT = 64 * 1024


async def parse_json(raw: str | bytes) -> Any:
    """`raw` parsed as JSON; ValueError if it is not JSON."""
    if len(raw) <= INLINE_LIMIT:
        return json.loads(raw)
    return await asyncio.to_thread(from_json, raw)


async def parse_model(model: type[M], raw: bytes) -> M:
    """`raw` validated as `model`; pydantic's ValidationError if it does not fit."""
    if len(raw) <= INLINE_LIMIT:
        return model.model_validate_json(raw)
    return await asyncio.to_thread(model.model_validate_json, raw)


async def decode_audio(encoded: str, max_bytes: int) -> bytes:
    if len(encoded) <= INLINE_LIMIT:
        return validation.audio_base64(encoded, max_bytes)
    return await asyncio.to_thread(validation.audio_base64, encoded, max_bytes)


class Reservation:
    """Bytes of the budget held for one clip; `release()` gives them back (once)."""

    def __init__(self, budget: "AudioBudget", size: int) -> None:
        self._budget = budget
        self.size = size

    def release(self) -> None:
        if self.size:
            self._budget.held -= self.size
            self.size = 0


class AudioBudget:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.held = 0

    def reserve(self, size: int) -> Reservation:
        """Hold `size` bytes, or refuse with 503 if all connections hold too much."""
        if self.held + size > self.max_bytes:
            raise InputError(
                "the server is holding too much audio from other learners right now; "
                "please send the clip again in a moment",
                status=503,
                code="busy",
            )
        self.held += size
        return Reservation(self, size)

    async def decode(self, encoded: str, max_bytes: int) -> tuple[bytes, Reservation]:
        """Decode a clip within the budget; the caller releases the reservation once
        the bytes are handed on (or dropped)."""
        if encoded.startswith("data:"):
            encoded = encoded.partition(",")[2]
        held = self.reserve(min(validation.decoded_size_bound(encoded), max_bytes))
        try:
            return await decode_audio(encoded, max_bytes), held
        except BaseException:
            held.release()
            raise
