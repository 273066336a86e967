"""Callers' numbers: only a keyed hash of them leaves the request (v1's promise)."""

import hashlib
import hmac

# 64 bits: no two callers of one deployment share a value in practice, and it is
# short enough to read in a log line.
HASH_HEX_DIGITS = 16


def caller_hash(number: str | None, secret: str) -> str | None:
    """HMAC-SHA256 of the number keyed by `secret`: the same number gives the same
    value, and without the secret the number cannot be found from it (a plain hash
    of a phone number can: there are few enough numbers to try them all)."""
    if not number:
        return None
    digest = hmac.new(secret.encode(), number.strip().encode(), hashlib.sha256).hexdigest()
    return digest[:HASH_HEX_DIGITS]
