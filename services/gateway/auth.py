"""Who is asking: the `Caller` of a bearer credential, API keys and revoked JWTs in
Redis, and the single-use tickets a browser opens a WebSocket with.

AUTH_MODE=open asks nobody anything: every caller is `OPEN_CALLER`. AUTH_MODE=token
takes `Authorization: Bearer <JWT or API key>` on /api/*, and on a WebSocket a
ticket (`?ticket=`, from POST /api/ws-ticket) or a first `auth` message (ws.py): a
browser cannot set headers on a WebSocket, and a long-lived token in a URL would
land in access logs.
"""

import logging
import re
import secrets
from datetime import datetime

from pydantic import BaseModel, ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.gateway.settings import GatewaySettings
from services.gateway.tokens import (
    OPEN_CALLER,
    AuthError,
    Caller,
    TokenClaims,
    bearer,
    digest,
    is_api_key,
    verify_jwt,
)
from shared.asking import unavailable
from shared.events import LearnerId, utcnow
from shared.streams import Keys

log = logging.getLogger(__name__)

# What a revoked JWT's deny-list entry holds: its presence is what counts.
_REVOKED = b"1"


class ApiKeyRecord(BaseModel):
    """What `Keys.api_key` holds for one key."""

    learner: LearnerId
    created_at: datetime
    label: str = ""
    admin: bool = False


class ApiKeyListing(ApiKeyRecord):
    # The first hex digits of the key's SHA-256: enough to revoke it by, never the key.
    id: str


class Authenticator:
    def __init__(self, settings: GatewaySettings, redis: Redis) -> None:
        self.mode = settings.auth_mode
        self._secret = settings.auth_secret.get_secret_value() if settings.auth_secret else ""
        self._leeway = settings.auth_clock_skew_s
        self._ticket_ttl = settings.ws_ticket_ttl_s
        self._redis = redis

    @property
    def ticket_ttl(self) -> int:
        return self._ticket_ttl

    async def from_header(self, authorization: str | None) -> Caller:
        """The caller of an HTTP request; AuthError for a missing or refused one."""
        if self.mode == "open":
            return OPEN_CALLER
        return await self.authenticate(bearer(authorization))

    async def authenticate(self, credential: str) -> Caller:
        """The caller a JWT or an API key stands for; AuthError if it stands for none,
        AskError (503) while Redis cannot say."""
        if self.mode == "open":
            return OPEN_CALLER
        if not credential:
            raise AuthError("the credential is empty", code="unauthenticated")
        try:
            if is_api_key(credential):
                record = await self._api_key(credential)
                return Caller(learner=record.learner, admin=record.admin, via="api_key")
            claims = verify_jwt(credential, self._secret, leeway=self._leeway)
            await self._not_revoked(claims)
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc
        return Caller(learner=claims.learner, admin=claims.admin, via="jwt")

    async def _api_key(self, key: str) -> ApiKeyRecord:
        raw = await self._redis.get(Keys.api_key(digest(key)))
        if raw is None:
            raise AuthError("unknown or revoked API key", code="invalid_token")
        try:
            return ApiKeyRecord.model_validate_json(raw)
        except ValidationError:
            log.error("the record of API key %s… is not readable", digest(key)[:12])
            raise AuthError("unknown or revoked API key", code="invalid_token") from None

    async def _not_revoked(self, claims: TokenClaims) -> None:
        if claims.jti is not None and await self._redis.exists(Keys.revoked_token(claims.jti)):
            raise AuthError("the token has been revoked", code="invalid_token")

    async def issue_ticket(self, caller: Caller) -> str:
        """A WebSocket ticket for `caller`: random, good once, for WS_TICKET_TTL_S."""
        ticket = secrets.token_urlsafe(32)
        held = Caller(learner=caller.learner, admin=caller.admin, via="ticket")
        try:
            await self._redis.set(
                Keys.ws_ticket(digest(ticket)), held.model_dump_json(), ex=self._ticket_ttl
            )
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc
        return ticket

    async def redeem_ticket(self, ticket: str) -> Caller:
        """The caller a ticket was issued to; it can never be used again. GETDEL:
        two connections racing with one ticket cannot both get it."""
        try:
            raw = await self._redis.getdel(Keys.ws_ticket(digest(ticket))) if ticket else None
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc
        if raw is None:
            raise AuthError(
                "unknown, used or expired ticket: ask POST /api/ws-ticket for a new one",
                code="invalid_ticket",
            )
        return Caller.model_validate_json(raw)


# ---------------------------------------------------------------- for scripts.tokens


async def store_api_key(
    redis: Redis, key: str, learner: str, *, label: str = "", admin: bool = False
) -> ApiKeyRecord:
    record = ApiKeyRecord(learner=learner, created_at=utcnow(), label=label, admin=admin)
    # No expiry: it lives until it is revoked.
    await redis.set(Keys.api_key(digest(key)), record.model_dump_json())
    return record


async def list_api_keys(redis: Redis) -> list[ApiKeyListing]:
    found: list[ApiKeyListing] = []
    async for name in redis.scan_iter(match=Keys.API_KEYS, count=1000):
        raw = await redis.get(name)
        if raw is None:
            continue
        hex_digest = name.decode().rsplit(":", 1)[1]
        record = ApiKeyRecord.model_validate_json(raw)
        found.append(ApiKeyListing(**record.model_dump(), id=hex_digest[:16]))
    return sorted(found, key=lambda listing: listing.created_at)


async def revoke_api_key(redis: Redis, key_or_id: str) -> ApiKeyRecord | None:
    """Delete an API key, named by itself or by the id `list_api_keys` shows; None if
    there is no such key (or an id is ambiguous)."""
    if is_api_key(key_or_id):
        names = [Keys.api_key(digest(key_or_id))]
    elif re.fullmatch(r"[0-9a-f]{8,64}", key_or_id):
        names = [name async for name in redis.scan_iter(match=Keys.api_key(key_or_id) + "*")]
        if len(names) != 1:
            return None
    else:
        return None
    raw = await redis.getdel(names[0])
    return ApiKeyRecord.model_validate_json(raw) if raw is not None else None


async def revoke_jwt(redis: Redis, claims: TokenClaims, *, leeway: float) -> bool:
    """Deny the token until it would have expired anyway (plus the clock skew); False
    for a token without a `jti`, which cannot be told apart from its siblings."""
    if claims.jti is None:
        return False
    remaining = (claims.expires_at - utcnow()).total_seconds() + leeway
    if remaining > 0:
        await redis.set(Keys.revoked_token(claims.jti), _REVOKED, ex=max(1, int(remaining) + 1))
    return True
