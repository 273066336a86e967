"""The gateway's credentials checked without Redis or a server: JWTs, the bearer
header, the settings it refuses to start with, what its logs blank, and that every
/api/* route asks who is calling."""

import base64
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from fastapi.routing import APIRoute
from pydantic import SecretStr

from services.gateway import api, frontend
from services.gateway.deps import get_caller
from services.gateway.main import create_app
from services.gateway.redaction import RedactSecrets, redact
from services.gateway.settings import (
    GatewaySettings,
    bind_refusal,
    is_loopback,
    open_mode_warning,
    refusal,
)
from services.gateway.tokens import (
    API_KEY_PREFIX,
    AuthError,
    bearer,
    digest,
    is_api_key,
    issue_jwt,
    new_api_key,
    verify_jwt,
)

SECRET = "s" * 40
SKEW = 30.0


def verify(token: str, secret: str = SECRET) -> Any:
    return verify_jwt(token, secret, leeway=SKEW)


def refused(token: str, secret: str = SECRET) -> AuthError:
    with pytest.raises(AuthError) as caught:
        verify(token, secret)
    return caught.value


def signed(claims: dict[str, Any], *, algorithm: str = "HS256", secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def soon() -> datetime:
    return datetime.now(UTC) + timedelta(hours=1)


def _b64(part: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


# ---------------------------------------------------------------- JWTs


def test_an_issued_token_verifies_as_its_learner() -> None:
    token = issue_jwt(SECRET, "ada", lifetime=timedelta(hours=1))
    claims = verify(token)
    assert claims.learner == "ada" and not claims.admin and claims.jti
    assert claims.expires_at > datetime.now(UTC)
    assert verify(issue_jwt(SECRET, "ops", lifetime=timedelta(hours=1), admin=True)).admin


def test_issue_refuses_a_learner_id_that_is_not_one() -> None:
    with pytest.raises(ValueError):
        issue_jwt(SECRET, "ada lovelace", lifetime=timedelta(hours=1))


def test_an_expired_token_is_refused_as_expired_beyond_the_skew_only() -> None:
    past = datetime.now(UTC) - timedelta(hours=2)
    expired = issue_jwt(SECRET, "ada", lifetime=timedelta(hours=1), now=past)
    assert refused(expired).code == "expired_token"
    # Expired 10 s ago: within the 30 s allowed for clocks that differ.
    just = issue_jwt(
        SECRET, "ada", lifetime=timedelta(hours=1), now=datetime.now(UTC) - timedelta(seconds=3610)
    )
    assert verify(just).learner == "ada"


def test_a_tampered_token_is_refused() -> None:
    token = issue_jwt(SECRET, "ada", lifetime=timedelta(hours=1))
    header, payload, signature = token.split(".")
    # Another learner in the payload, the signature kept.
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = f"{header}.{_b64({**claims, 'sub': 'grace'})}.{signature}"
    assert refused(forged).code == "invalid_token"
    # The signature changed.
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    assert refused(f"{header}.{payload}.{flipped}").code == "invalid_token"
    # Signed with another secret.
    assert refused(token, secret="t" * 40).code == "invalid_token"


def test_no_other_algorithm_verifies() -> None:
    claims = {"sub": "ada", "exp": soon()}
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'sub': 'ada', 'exp': 2**31})}."
    error = refused(unsigned)
    assert error.code == "invalid_token"
    # The same secret, another HMAC (a key long enough for PyJWT to sign without a warning).
    long_secret = "s" * 64
    for algorithm in ("HS384", "HS512"):
        token = signed(claims, algorithm=algorithm, secret=long_secret)
        assert refused(token, secret=long_secret).code == "invalid_token"


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "ada"},  # no exp: it would never expire
        {"exp": 2**31},  # no learner
        {"sub": "ada lovelace", "exp": 2**31},  # not a learner id
        {"sub": "", "exp": 2**31},
        {"sub": 42, "exp": 2**31},
    ],
)
def test_required_claims(claims: dict[str, Any]) -> None:
    assert refused(signed(claims)).code == "invalid_token"


@pytest.mark.parametrize("garbage", ["", "x", "a.b.c", "....", "Bearer abc", "lva_" + "a" * 10])
def test_garbage_is_an_invalid_token(garbage: str) -> None:
    assert refused(garbage).code == "invalid_token"


def test_admin_scope_as_string_or_list() -> None:
    assert verify(signed({"sub": "ops", "exp": soon(), "scope": "read admin"})).admin
    assert verify(signed({"sub": "ops", "exp": soon(), "scope": ["admin"]})).admin
    assert not verify(signed({"sub": "ada", "exp": soon(), "scope": "administrator"})).admin
    assert not verify(signed({"sub": "ada", "exp": soon(), "scope": {"admin": True}})).admin


def test_reasons_never_repeat_the_token() -> None:
    token = issue_jwt(SECRET, "ada", lifetime=timedelta(hours=1))
    error = refused(token, secret="t" * 40)
    assert token not in error.reason and token.split(".")[2] not in error.reason


# ---------------------------------------------------------------- API keys and headers


def test_api_keys_are_random_prefixed_and_kept_as_their_hash() -> None:
    key, other = new_api_key(), new_api_key()
    assert key != other and is_api_key(key) and key.startswith(API_KEY_PREFIX)
    assert len(key) > 40
    assert digest(key) != key and len(digest(key)) == 64 and digest(key) == digest(key)
    assert not is_api_key(issue_jwt(SECRET, "ada", lifetime=timedelta(hours=1)))


@pytest.mark.parametrize(
    ("header", "credential"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("BEARER lva_x", "lva_x")],
)
def test_bearer_header(header: str, credential: str) -> None:
    assert bearer(header) == credential


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Basic YWRhOng=", "abc"])
def test_bearer_header_missing_or_of_another_scheme(header: str | None) -> None:
    with pytest.raises(AuthError) as caught:
        bearer(header)
    assert caught.value.code == "unauthenticated"


# ---------------------------------------------------------------- settings


def settings(**values: Any) -> GatewaySettings:
    return GatewaySettings(_env_file=None, **values)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("example.com", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_open_mode_is_loopback_only_and_says_so() -> None:
    assert refusal(settings(host="127.0.0.1")) is None
    assert open_mode_warning(settings(host="127.0.0.1")) == (
        "AUTH_MODE=open: everyone is learner 'local'; loopback only"
    )
    problem = refusal(settings(host="0.0.0.0"))
    assert problem is not None and "HOST=0.0.0.0" in problem and "AUTH_MODE=token" in problem
    assert bind_refusal(settings(host="0.0.0.0")) == problem
    allowed = settings(host="0.0.0.0", auth_open_any_host=True)
    assert refusal(allowed) is None
    assert "AUTH_OPEN_ANY_HOST" in str(open_mode_warning(allowed))


def test_token_mode_needs_a_long_enough_secret() -> None:
    missing = refusal(settings(auth_mode="token"))
    assert missing is not None and "AUTH_SECRET is not set" in missing
    short = refusal(settings(auth_mode="token", auth_secret=SecretStr("x" * 31)))
    assert short is not None and "shorter than 32 bytes" in short
    good = settings(auth_mode="token", auth_secret=SecretStr("x" * 32), host="0.0.0.0")
    assert refusal(good) is None and open_mode_warning(good) is None
    # The app itself refuses too, before connecting anywhere.
    with pytest.raises(SystemExit, match="AUTH_SECRET"):
        create_app(settings(auth_mode="token"))


def test_the_secret_is_never_shown() -> None:
    configured = settings(auth_mode="token", auth_secret=SecretStr(SECRET))
    assert SECRET not in repr(configured) and SECRET not in str(configured.model_dump())


# ---------------------------------------------------------------- logs and routes


def test_tickets_and_tokens_are_blanked_in_log_lines() -> None:
    line = '127.0.0.1:5 - "WebSocket /ws/s1?stream=1&ticket=abc-DEF_123&x=1" [accepted]'
    assert redact(line) == (
        '127.0.0.1:5 - "WebSocket /ws/s1?stream=1&ticket=[redacted]&x=1" [accepted]'
    )
    assert redact("/ws/s?token=hush") == "/ws/s?token=[redacted]"
    assert redact("/ws/s?a=1&access_token=hush&api_key=hush") == (
        "/ws/s?a=1&access_token=[redacted]&api_key=[redacted]"
    )
    args = ("c", "/ws/s?ticket=t1")
    record = logging.LogRecord(
        "uvicorn.error", logging.INFO, __file__, 1, '%s - "WebSocket %s"', args, None
    )
    RedactSecrets().filter(record)
    assert "t1" not in record.getMessage()


def test_every_api_route_asks_who_is_calling() -> None:
    def depends_on_caller(dependant: Any) -> bool:
        return any(d.call is get_caller or depends_on_caller(d) for d in dependant.dependencies)

    routes = [r for r in (*api.router.routes, *frontend.router.routes) if isinstance(r, APIRoute)]
    api_routes = [r for r in routes if r.path.startswith("/api/")]
    assert len(api_routes) >= 6
    for route in api_routes:
        assert depends_on_caller(route.dependant), f"{route.path} does not ask who is calling"
    public = [r for r in routes if not r.path.startswith("/api/")]
    assert {"/health", "/health/live", "/"} <= {r.path for r in public}
    assert not any(depends_on_caller(r.dependant) for r in public)
