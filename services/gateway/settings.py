"""Gateway settings: where it listens, how long it waits, the limits of input, and
who may talk to it (and whether it may start at all with them)."""

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from shared.events import DEFAULT_LEARNER
from shared.settings import CommonSettings

# HS256's key should be at least as long as its hash (RFC 7518 3.2).
MIN_SECRET_BYTES = 32


class GatewaySettings(CommonSettings):
    port: int = 8000
    # Seconds to wait for the companion's reply before answering 504 / an error
    # message. Covers a cold model and a queue of other learners' messages.
    reply_timeout: float = 30.0
    # Seconds to wait for the archive (search, history, stats).
    archive_timeout: float = 10.0

    # Limits of input: beyond them a request gets a 400 / an error message.
    max_text_chars: int = 4000
    # A clip (v1: 25 MB); its base64 in a request may be a third larger.
    max_audio_bytes: int = 25 * 1024 * 1024
    # The transcriber's limit (same variable, MAX_AUDIO_DURATION), read here only so
    # the PWA stops recording before a clip would be refused.
    max_audio_duration: float = 60.0
    max_search_query_chars: int = 2000
    max_search_limit: int = 100
    max_history_limit: int = 200
    # /api/stats lists at most this many active session ids (most recent first).
    stats_max_session_ids: int = 100
    # Messages one WebSocket may have waiting for replies; more are refused.
    ws_max_pending: int = 8
    # Seconds the answer to a WebSocket message with an `id` is kept, so a client
    # resending it after a dropped connection gets that answer again instead of a
    # second one. It should outlast how long a client keeps unanswered messages.
    ws_replay_ttl: int = 3600

    # Seconds a clip's bytes wait in Redis for the transcriber (claim check).
    audio_ttl: int = 300
    # Decoded audio all connections of one gateway may hold at once, waiting for
    # its turn or for Redis (default: 8 clips of the largest size); more is refused
    # with 503 / a `busy` error instead of growing the process without bound.
    max_audio_bytes_held: int = 8 * 25 * 1024 * 1024
    # Entries of a stream waiting for its workers (consumer group lag) at which new
    # requests for it are refused with 503 / a `busy` error, before they are
    # published (shared.backlog): the workers could not answer them in time. Far
    # below STREAM_MAXLEN, so a stream is never trimmed of work. 0: no limit.
    max_backlog: int = Field(1000, ge=0)

    # `token`: every /api/* request and WebSocket needs a credential (a JWT signed
    # with AUTH_SECRET, or an API key; see services/gateway/auth.py). `open`: no
    # credential, everyone is the one learner DEFAULT_LEARNER, and only on loopback.
    auth_mode: Literal["open", "token"] = "open"
    # Signs and checks the JWTs (HS256): at least MIN_SECRET_BYTES, required in token
    # mode. Changing it invalidates every JWT issued with the old one.
    auth_secret: SecretStr | None = None
    # Seconds a JWT's `exp` (and `nbf`, `iat`) may be off: clocks of hosts differ.
    auth_clock_skew_s: float = Field(30.0, ge=0)
    # Open mode on a HOST other than loopback, for a container whose port is
    # published on the host's loopback only (deploy/compose.yaml): the gateway cannot
    # see that itself. Anywhere else it lets anyone on the network in.
    auth_open_any_host: bool = False
    # Seconds a WebSocket ticket (POST /api/ws-ticket) may wait for its one use.
    ws_ticket_ttl_s: int = Field(30, ge=1)
    # Seconds a WebSocket without a ticket has to send its `auth` message.
    ws_auth_timeout_s: float = Field(10.0, gt=0)

    # Link codes (POST /api/phone-link) one learner may try a minute: a code has
    # 10^6 values and lives minutes, so guessing one is hopeless at this rate.
    phone_link_tries: int = Field(5, ge=1)

    # Comma-separated origins allowed by CORS ("*": any).
    cors_origins: str = "*"

    # The PWA served at "/". Found from this file rather than the working directory,
    # so `python -m services.gateway` serves it from wherever it is started.
    frontend_dir: Path = Path(__file__).resolve().parents[2] / "frontend"

    @property
    def max_body_bytes(self) -> int:
        """Largest request or WebSocket message: a clip in base64 plus JSON around it."""
        return self.max_audio_bytes * 4 // 3 + 64 * 1024


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def secret_refusal(settings: GatewaySettings) -> str | None:
    """Why AUTH_SECRET cannot sign tokens (None: it can)."""
    secret = settings.auth_secret.get_secret_value() if settings.auth_secret else ""
    if not secret:
        return (
            "AUTH_SECRET is not set; set it to a long random value, e.g. "
            "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
        )
    if len(secret.encode()) < MIN_SECRET_BYTES:
        return f"AUTH_SECRET is shorter than {MIN_SECRET_BYTES} bytes: too easy to guess"
    return None


def bind_refusal(settings: GatewaySettings) -> str | None:
    """Why the gateway must not listen on HOST with these settings (None: it may)."""
    if settings.auth_mode == "open" and not (
        is_loopback(settings.host) or settings.auth_open_any_host
    ):
        return (
            f"AUTH_MODE=open lets anyone in as learner {DEFAULT_LEARNER!r}, and "
            f"HOST={settings.host} is reachable from other machines. Set AUTH_MODE=token "
            "and AUTH_SECRET (see the README's Security section), or bind to loopback "
            "(HOST=127.0.0.1)"
        )
    return None


def refusal(settings: GatewaySettings) -> str | None:
    """Why the gateway must not start with these settings (None: it may)."""
    if settings.auth_mode == "token":
        problem = secret_refusal(settings)
        if problem is not None:
            return f"AUTH_MODE=token, but {problem}"
    return bind_refusal(settings)


def open_mode_warning(settings: GatewaySettings) -> str | None:
    """What an operator is told once at start when nobody is asked who they are."""
    if settings.auth_mode != "open":
        return None
    warning = f"AUTH_MODE=open: everyone is learner {DEFAULT_LEARNER!r}; loopback only"
    if settings.auth_open_any_host and not is_loopback(settings.host):
        warning += f" (HOST={settings.host} with AUTH_OPEN_ANY_HOST: keep its port off the network)"
    return warning
