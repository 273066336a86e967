"""The credentials the gateway accepts, checked without any I/O: JWTs (HS256, signed
with AUTH_SECRET) and API keys (random, recognised by their prefix).

A JWT says who the learner is in `sub` and until when in `exp`; `scope` "admin"
lets its holder see everyone's stats. The gateway issues none itself:
`python -m scripts.tokens issue` does, or any system that holds AUTH_SECRET. An API
key is for scripts: long-lived, stored only as its SHA-256 in Redis
(`services.gateway.auth`), so a copy of Redis gives no one a usable key.
"""

import hashlib
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import jwt
from pydantic import BaseModel, ConfigDict

from shared.events import DEFAULT_LEARNER, LEARNER_PATTERN, LearnerId, new_id, utcnow

ALGORITHM = "HS256"
ADMIN_SCOPE = "admin"
# Never tried as a JWT, and easy to spot in a leaked file (secret scanners).
API_KEY_PREFIX = "lva_"

AuthCode = Literal["unauthenticated", "invalid_token", "expired_token", "invalid_ticket"]


class Caller(BaseModel):
    """Who a request or a WebSocket is from, however they proved it."""

    model_config = ConfigDict(frozen=True)

    learner: LearnerId
    # May see everyone's stats (an operator's token, or anyone in open mode).
    admin: bool = False
    via: Literal["open", "jwt", "api_key", "ticket"]


# AUTH_MODE=open: one learner, who may see everything, since it is everyone.
OPEN_CALLER = Caller(learner=DEFAULT_LEARNER, admin=True, via="open")


class AuthError(Exception):
    """A missing or refused credential: 401 on HTTP, an `error` and 1008 on a WebSocket.

    The reason never repeats the credential: it goes into logs and responses."""

    def __init__(self, reason: str, *, code: AuthCode) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class TokenClaims(BaseModel):
    learner: LearnerId
    admin: bool
    # Our tokens always have one (so they can be revoked); another issuer's may not.
    jti: str | None
    expires_at: datetime


def is_api_key(credential: str) -> bool:
    return credential.startswith(API_KEY_PREFIX)


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """The SHA-256 (hex) under which an API key or a ticket is kept.

    A plain hash is enough: both are 256 random bits, so there is nothing to
    brute-force that a slow hash would protect."""
    return hashlib.sha256(secret.encode()).hexdigest()


def issue_jwt(
    secret: str,
    learner: str,
    *,
    lifetime: timedelta,
    admin: bool = False,
    now: datetime | None = None,
) -> str:
    if not re.fullmatch(LEARNER_PATTERN, learner):
        raise ValueError(f"learner {learner!r} does not match {LEARNER_PATTERN}")
    issued = now or utcnow()
    claims: dict[str, Any] = {
        "sub": learner,
        "iat": issued,
        "exp": issued + lifetime,
        "jti": new_id(),
    }
    if admin:
        claims["scope"] = ADMIN_SCOPE
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def _scopes(value: object) -> set[str]:
    # OAuth's `scope` is a space-separated string (RFC 8693); a list is common too.
    if isinstance(value, str):
        return set(value.split())
    if isinstance(value, list):
        return {item for item in value if isinstance(item, str)}
    return set()


def verify_jwt(token: str, secret: str, *, leeway: float, verify_exp: bool = True) -> TokenClaims:
    """The claims of a token signed with `secret`; AuthError otherwise.

    Only HS256 is accepted, whatever the token's header says: `none`, or an
    asymmetric algorithm keyed with the secret, must never verify."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            leeway=leeway,
            options={"require": ["exp", "sub"], "verify_exp": verify_exp},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("the token has expired", code="expired_token") from None
    except jwt.InvalidTokenError as exc:
        # PyJWT's messages name what is wrong ("Signature verification failed"),
        # never the token's content.
        raise AuthError(f"the token is not valid: {exc}", code="invalid_token") from None
    learner = claims["sub"]
    if not isinstance(learner, str) or not re.fullmatch(LEARNER_PATTERN, learner):
        raise AuthError(
            f"the token's `sub` is not a learner id ({LEARNER_PATTERN})", code="invalid_token"
        )
    jti = claims.get("jti")
    return TokenClaims(
        learner=learner,
        admin=ADMIN_SCOPE in _scopes(claims.get("scope")),
        jti=jti if isinstance(jti, str) and jti else None,
        expires_at=datetime.fromtimestamp(claims["exp"], tz=UTC),
    )


def bearer(authorization: str | None) -> str:
    """The credential of an `Authorization: Bearer ...` header; AuthError without one."""
    if not authorization:
        raise AuthError(
            "this needs a credential: send `Authorization: Bearer <token or API key>`",
            code="unauthenticated",
        )
    scheme, _, credential = authorization.partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise AuthError(
            "the Authorization header must be `Bearer <token or API key>`",
            code="unauthenticated",
        )
    return credential
