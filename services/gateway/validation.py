"""Checks of what learners send, with the reason a person can act on."""

import base64
import binascii
import re
import time

from shared.events import SESSION_ID_PATTERN

_SESSION_ID = re.compile(SESSION_ID_PATTERN)


class InputError(Exception):
    """Bad input: the request is refused with `reason` (HTTP `status` on REST)."""

    def __init__(self, reason: str, *, status: int = 400, code: str = "bad_request") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.code = code


def session_id(value: str) -> str:
    if not _SESSION_ID.match(value):
        raise InputError(
            "session_id must be 1 to 64 characters of letters, digits, '_' or '-'",
            code="invalid_session_id",
        )
    return value


def utterance(text: str, max_chars: int) -> str:
    cleaned = text.strip()
    if not cleaned:
        raise InputError("text is empty", code="empty_text")
    if len(cleaned) > max_chars:
        raise InputError(
            f"text is {len(cleaned)} characters long; the limit is {max_chars}",
            code="text_too_long",
        )
    return cleaned


def search_query(query: str, max_chars: int) -> str:
    if not query.strip():
        raise InputError("query is empty", code="empty_query")
    if len(query) > max_chars:
        raise InputError(
            f"query is {len(query)} characters long; the limit is {max_chars}",
            code="query_too_long",
        )
    return query


def limit(value: int, maximum: int, name: str = "limit") -> int:
    if not 1 <= value <= maximum:
        raise InputError(f"{name} must be between 1 and {maximum}, got {value}", code="bad_limit")
    return value


# Base64 characters decoded per piece: each piece is one short call, so a thread
# decoding a 33 MB string hands the interpreter back to the event loop between
# pieces (binascii holds it for the whole of one call). A multiple of 4.
DECODE_PIECE_CHARS = 1 << 18


def _too_large(max_bytes: int) -> InputError:
    return InputError(
        f"the audio is larger than {max_bytes // (1024 * 1024)} MB",
        status=413,
        code="audio_too_large",
    )


def _invalid_base64() -> InputError:
    return InputError("the audio is not valid base64", code="invalid_audio")


def decoded_size_bound(encoded: str) -> int:
    """At most how many bytes `encoded` decodes to (whitespace counted as data)."""
    return len(encoded) * 3 // 4


def audio_base64(encoded: str, max_bytes: int) -> bytes:
    """Decode a clip sent as base64 (a `data:` URL prefix is accepted too).

    Whitespace anywhere is ignored (MIME wraps lines); padding may only end it.
    """
    if encoded.startswith("data:"):
        encoded = encoded.partition(",")[2]
    parts: list[bytes] = []
    size = 0
    carry = ""
    padded = False
    for start in range(0, len(encoded), DECODE_PIECE_CHARS):
        piece = carry + "".join(encoded[start : start + DECODE_PIECE_CHARS].split())
        whole = len(piece) - len(piece) % 4
        piece, carry = piece[:whole], piece[whole:]
        if not piece:
            continue
        if padded:
            # Data after the padding that ended an earlier piece.
            raise _invalid_base64()
        try:
            data = base64.b64decode(piece, validate=True)
        except (binascii.Error, ValueError):
            raise _invalid_base64() from None
        padded = piece.endswith("=")
        size += len(data)
        if size > max_bytes:
            raise _too_large(max_bytes)
        parts.append(data)
        # Hands the interpreter to any thread waiting for it (the event loop, when
        # this runs in a worker thread) instead of keeping it up to the 5 ms switch.
        time.sleep(0)
    if carry:
        raise _invalid_base64()
    if not size:
        raise InputError("the audio is empty", code="invalid_audio")
    return b"".join(parts)
