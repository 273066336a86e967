"""Twilio's webhooks: the form they post, and the check of X-Twilio-Signature."""

import logging
from typing import cast
from urllib.parse import parse_qsl

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from twilio.request_validator import RequestValidator

from services.telephony.settings import TelephonySettings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Twilio-Signature"
# Twilio's parameters take a few kilobytes; anything far larger is not Twilio.
MAX_FORM_BYTES = 64 * 1024


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


def public_url(request: Request, base: str | None) -> str:
    """The URL Twilio called, which its signature covers: PUBLIC_BASE_URL with the
    path and query as they arrived (percent-encoding untouched), or the request's
    own URL when unset."""
    if not base:
        return str(request.url)
    raw_path = cast(bytes | None, request.scope.get("raw_path")) or request.url.path.encode()
    query = cast(bytes, request.scope.get("query_string", b""))
    url = base.rstrip("/") + raw_path.decode("latin-1")
    return f"{url}?{query.decode('latin-1')}" if query else url


class Signatures:
    """Checks that a webhook was signed by Twilio with the account's Auth Token."""

    def __init__(self, settings: TelephonySettings) -> None:
        token = settings.twilio_auth_token
        self._validator = RequestValidator(token) if token else None
        self._base = settings.public_base_url

    async def signed_form(self, request: Request) -> FormData:
        form = await read_form(request)
        if self._validator is None:
            return form  # local mode, said once at start
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signature:
            log.warning("refused %s: no %s", request.url.path, SIGNATURE_HEADER)
            raise Refused(f"missing {SIGNATURE_HEADER}")
        url = public_url(request, self._base)
        if not self._validator.validate(url, form, signature):
            # The URL, not the form: it is what an operator can get wrong (PUBLIC_BASE_URL).
            log.warning("refused %s: the signature does not match %s", request.url.path, url)
            raise Refused(f"{SIGNATURE_HEADER} does not match this request")
        return form
