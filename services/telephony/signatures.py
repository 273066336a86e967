"""Twilio's webhooks: the form they post, and the check of X-Twilio-Signature.

Twilio signs the URL it called (plus, for a webhook, its sorted form) with the
account's Auth Token and HMAC-SHA1, or, where a Webhooks rule matches, with the
rule's SharedKey and the algorithm named in X-Twilio-Webhooks-Signature-Settings.
The ConversationRelay WebSocket is signed the same way: its handshake carries the
signature of the wss:// URL, with no parameters.
"""

import logging
from typing import cast
from urllib.parse import parse_qsl, urlsplit

from fastapi import Request, WebSocket
from starlette.datastructures import FormData, UploadFile
from starlette.requests import HTTPConnection
from twilio.request_validator import RequestValidator, get_signature_algorithm

from services.telephony.settings import TelephonySettings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Twilio-Signature"
SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
# Twilio's parameters take a few kilobytes; anything far larger is not Twilio.
MAX_FORM_BYTES = 64 * 1024
_WS_SCHEMES = {"http": "ws", "https": "wss"}


class Refused(Exception):
    """A request that is not (or cannot be shown to be) Twilio's: answered in plain text."""

    def __init__(self, reason: str, *, status: int = 403) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


async def read_form(request: Request) -> FormData:
    """The urlencoded form Twilio posts, read without python-multipart (which
    Starlette's `request.form()` needs even for this simple case)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise Refused(f"the form is larger than {MAX_FORM_BYTES} bytes", status=413)
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise Refused("the form is not UTF-8", status=400) from None
    # A multidict: the validator signs every value of a repeated parameter.
    pairs: list[tuple[str, str | UploadFile]] = list(parse_qsl(text, keep_blank_values=True))
    return FormData(pairs)


def public_url(connection: HTTPConnection, base: str | None) -> str:
    """The URL Twilio called, which its signature covers: PUBLIC_BASE_URL with the
    path and query as they arrived (percent-encoding untouched), or the request's
    own URL when unset. For a WebSocket, the scheme is PUBLIC_BASE_URL's made ws(s)."""
    if not base:
        return str(connection.url)
    if connection.scope["type"] == "websocket":
        parts = urlsplit(base)
        base = parts._replace(scheme=_WS_SCHEMES.get(parts.scheme, parts.scheme)).geturl()
    raw_path = cast(bytes | None, connection.scope.get("raw_path")) or connection.url.path.encode()
    query = cast(bytes, connection.scope.get("query_string", b""))
    url = base.rstrip("/") + raw_path.decode("latin-1")
    return f"{url}?{query.decode('latin-1')}" if query else url


class Signatures:
    """Checks that a request was signed by Twilio (Auth Token or a SharedKey)."""

    def __init__(self, settings: TelephonySettings) -> None:
        token = settings.twilio_auth_token
        self._validator = RequestValidator(token) if token else None
        shared = settings.twilio_webhook_shared_key
        self._shared = RequestValidator(shared) if shared else None
        self._base = settings.public_base_url

    def _check(self, connection: HTTPConnection, params: FormData | dict[str, str]) -> None:
        signature = connection.headers.get(SIGNATURE_HEADER)
        path = connection.url.path
        if not signature:
            log.warning("refused %s: no %s", path, SIGNATURE_HEADER)
            raise Refused(f"missing {SIGNATURE_HEADER}")
        validator = self._validator
        signing = connection.headers.get(SETTINGS_HEADER)
        if signing:
            # A Webhooks rule signed it with its SharedKey, not the Auth Token.
            if self._shared is None:
                log.error(
                    "refused %s: signed with a Webhooks rule's SharedKey, and "
                    "TWILIO_WEBHOOK_SHARED_KEY is not set",
                    path,
                )
                raise Refused(f"{SETTINGS_HEADER} names a key this service does not have")
            validator = self._shared
        assert validator is not None
        url = public_url(connection, self._base)
        # An algorithm the SDK does not know fails validation (and the SDK says so).
        if not validator.validate(url, params, signature, get_signature_algorithm(signing)):
            # The URL, not the form: it is what an operator can get wrong (PUBLIC_BASE_URL).
            log.warning("refused %s: the signature does not match %s", path, url)
            raise Refused(f"{SIGNATURE_HEADER} does not match this request")

    async def signed_form(self, request: Request) -> FormData:
        form = await read_form(request)
        if self._validator is not None:
            self._check(request, form)
        return form  # in local mode unchecked, as said once at start

    def check_websocket(self, websocket: WebSocket) -> None:
        """Raise Refused unless the handshake was signed for the wss:// URL."""
        if self._validator is not None:
            self._check(websocket, {})
