"""Telephony settings: Twilio's token and public URL, how long a webhook waits, what
the caller hears, and whether the service may start at all with them."""

import ipaddress
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field

from shared.settings import CommonSettings

# Used to hash callers' numbers when PHONE_HASH_SECRET is unset, in local mode only:
# a local run then keeps no number in clear either, with a hash anyone can repeat.
DEV_PHONE_HASH_SECRET = "learning-voice-agent-local-dev"


class TelephonySettings(CommonSettings):
    # Named for the service, not `port` with an alias: CommonSettings populates
    # fields by name too, so an aliased `port` would also read PORT (the gateway's).
    telephony_port: int = 8001
    # Twilio's Auth Token, which signs every webhook (X-Twilio-Signature). Unset:
    # local mode, signatures are not checked, and the service binds only to loopback.
    twilio_auth_token: str | None = None
    # The URL Twilio calls (https://abc.ngrok.app): signatures are computed over it
    # plus the path and query. Behind a TLS-terminating proxy the URL the service sees
    # differs (http, another host or port). Unset: the request's own URL.
    public_base_url: str | None = None
    # `gather`: v1's <Gather> webhooks, a request per turn, works on every account.
    # `relay`: ConversationRelay, one WebSocket per call, the reply spoken as it is
    # written and the caller able to talk over it (see services/telephony/relay.py).
    twilio_mode: Literal["gather", "relay"] = "gather"
    # The SharedKey secret of a Twilio Webhooks rule, for webhooks Twilio signs with
    # HMAC-SHA256 (X-Twilio-Webhooks-Signature-Settings) instead of the Auth Token.
    twilio_webhook_shared_key: str | None = None
    # Record calls (<Start><Recording>) and keep each recording's SID, URL and
    # length with the call's exchanges. Off: recording callers needs their consent.
    twilio_record_calls: bool = False
    # Times in a row the caller may say nothing (or nothing clear) before the call
    # ends politely, rather than re-prompting an empty line forever.
    max_reprompts: int = 3
    # ConversationRelay: seconds to wait for Twilio's `setup` message after the
    # WebSocket opens, and the largest message accepted from it.
    relay_setup_timeout: float = 10.0
    relay_max_message_bytes: int = 64 * 1024
    # Words a second the caller hears (Twilio's voices speak about 2.5): after the
    # goodbye and summary, the call ends once they are likely heard, at most this
    # many seconds later.
    relay_goodbye_wait_max: float = 20.0
    # ConversationRelay's voice (e.g. en-US-Journey-O for Google, Joanna-Neural for
    # Amazon); unset: Twilio's default for the language.
    relay_voice: str | None = None
    relay_tts_provider: str | None = None
    # Seconds to wait for the companion's reply to one utterance, over every webhook
    # that waits for it; then the caller hears an apology.
    reply_timeout: float = 30.0
    # Seconds one webhook waits for the reply before answering a holding phrase and a
    # redirect to where the reply is picked up: well below Twilio's 15 s limit.
    reply_deadline: float = 8.0
    # Seconds a reply (or that it is awaited) stays in Redis for the next webhook.
    twilio_reply_ttl: int = 300
    # Speech Twilio heard with less confidence than this (0 to 1) is not sent to the
    # companion: the caller is asked to say it again.
    min_confidence: float = 0.3
    # Longer speech is cut to this many characters (the gateway's MAX_TEXT_CHARS).
    max_text_chars: int = 4000
    # As the gateway's: while this many utterances wait for the responder, a caller
    # hears the apology instead of waiting for a reply that would come too late. 0: no limit.
    max_backlog: int = Field(1000, ge=0)
    voice: str = "Polly.Joanna-Neural"
    language: str = "en-US"
    # Key of the HMAC that stands for a caller's number in logs, events and the
    # archive. Required with a token; in local mode a fixed development value.
    phone_hash_secret: str | None = None
    # open: every caller is the one local learner (as AUTH_MODE=open on the
    # gateway: one archive and context for the phone and the app). token: each
    # number is a learner of its own (`phone:<hash>`) until a signed-in learner
    # links it to their account with a code the call speaks (shared.phones).
    auth_mode: Literal["open", "token"] = "open"
    # Seconds a spoken link code ("link my phone") may be redeemed in.
    phone_link_code_ttl_s: int = Field(600, ge=60, le=3600)
    # Clips' bytes in Redis, for the shared asking code: Twilio transcribes calls
    # itself, so telephony sends text only.
    audio_ttl: int = 300

    @property
    def signatures_checked(self) -> bool:
        return bool(self.twilio_auth_token)

    @property
    def hash_secret(self) -> str:
        return self.phone_hash_secret or DEV_PHONE_HASH_SECRET

    @property
    def path_prefix(self) -> str:
        """The path PUBLIC_BASE_URL ends with (a proxy that mounts the service under
        /voice-agent): TwiML's URLs carry it, so Twilio's next request finds us."""
        if not self.public_base_url:
            return ""
        return urlsplit(self.public_base_url).path.rstrip("/")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def refusal(settings: TelephonySettings) -> str | None:
    """Why the service must not start with these settings (None: it may)."""
    if settings.max_reprompts < 1:
        return "MAX_REPROMPTS must be at least 1"
    if settings.public_base_url:
        parts = urlsplit(settings.public_base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return (
                f"PUBLIC_BASE_URL={settings.public_base_url!r} is not an http(s) URL; "
                "set it to the URL Twilio calls, e.g. https://abc.ngrok.app"
            )
        if parts.query or parts.fragment:
            return "PUBLIC_BASE_URL must not have a query or fragment"
    if not settings.reply_deadline < settings.reply_timeout:
        return "REPLY_DEADLINE must be shorter than REPLY_TIMEOUT"
    if settings.signatures_checked:
        if not settings.phone_hash_secret:
            return (
                "TWILIO_AUTH_TOKEN is set but PHONE_HASH_SECRET is not: callers' numbers "
                "are kept only as a keyed hash, and production needs a key of its own; "
                "set PHONE_HASH_SECRET to a long random value (keep it: changing it "
                "changes every caller's hash)"
            )
        return None
    if not is_loopback(settings.host):
        return (
            f"TWILIO_AUTH_TOKEN is not set, so Twilio's signatures cannot be checked, and "
            f"HOST={settings.host} is reachable from other machines: anyone could post "
            "fake calls. Set TWILIO_AUTH_TOKEN (Twilio Console, Account Info), or bind to "
            "loopback (HOST=127.0.0.1) for local testing"
        )
    return None


def local_mode_warning(settings: TelephonySettings) -> str | None:
    """What an operator is told once at start when signatures are not checked."""
    if settings.signatures_checked:
        return None
    secret = (
        "" if settings.phone_hash_secret else "; callers' numbers are hashed with a fixed dev key"
    )
    return (
        f"local mode: TWILIO_AUTH_TOKEN is unset, so Twilio signatures are NOT checked "
        f"(bound to {settings.host} only){secret}"
    )
