"""Who a WebSocket is from, settled before it may do anything else.

AUTH_MODE=open: the one local learner, and nothing changes for a client (v1's
contract). AUTH_MODE=token: a browser cannot set an Authorization header on a
WebSocket, so a connection proves itself in one of two ways:

- `?ticket=...` in its URL, from `POST /api/ws-ticket` (which takes the bearer
  header): good once, for WS_TICKET_TTL_S seconds, checked at once;
- or its first message, `{"type": "auth", "token": "<JWT or API key>"}`, within
  WS_AUTH_TIMEOUT_S, answered `{"type": "authenticated", "learner": ...}`.

Until then it gets nothing else: any other message, a wrong, expired or used
credential, or silence, gets one `error` (`unauthenticated`, `invalid_token`,
`expired_token`, `invalid_ticket`) and close code 1008. A token in the URL is
refused outright: it would be in every access log.
"""

import asyncio
import contextlib
import json
from collections.abc import Mapping
from typing import Any

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from services.gateway.auth import Authenticator
from services.gateway.messages import error
from services.gateway.redaction import SECRET_PARAMS
from services.gateway.settings import GatewaySettings
from services.gateway.tokens import OPEN_CALLER, AuthError, Caller
from shared import metrics
from shared.asking import AskError

# Close codes (RFC 6455): refused by policy; and the server cannot check now.
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013
# An `auth` message is a token and a few words: a longer first message is not one,
# and is not parsed (anyone may send one before proving anything).
MAX_AUTH_MESSAGE_CHARS = 16 * 1024
MAX_ID_CHARS = 64


async def refuse(
    ws: WebSocket, code: str, reason: str, *, close_code: int = POLICY_VIOLATION
) -> None:
    """Tell the client why, then close; a client already gone is no error."""
    metrics.AUTH_REFUSED.labels("ws", code).inc()
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await ws.send_text(json.dumps(error(code, reason)))
        metrics.WS_MESSAGES.labels("ws", "sent", "error").inc()
        # The close reason is at most 123 bytes: the code says it, the error said why.
        await ws.close(code=close_code, reason=code)


def _first_message(frame: Mapping[str, Any]) -> dict[str, Any] | None:
    text = frame.get("text")
    if not isinstance(text, str) or len(text) > MAX_AUTH_MESSAGE_CHARS:
        return None
    try:
        message = json.loads(text)
    except ValueError:
        return None
    return message if isinstance(message, dict) and message.get("type") == "auth" else None


def authenticated(caller: Caller, answering: object = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "authenticated", "learner": caller.learner}
    if isinstance(answering, str) and 0 < len(answering) <= MAX_ID_CHARS:
        body["id"] = answering
    return body


async def authenticate(
    ws: WebSocket, authenticator: Authenticator, settings: GatewaySettings
) -> Caller | None:
    """The caller of an accepted connection, or None once it was refused (and told
    why, and closed) or left."""
    if authenticator.mode == "open":
        return OPEN_CALLER
    in_url = sorted(set(ws.query_params) & (set(SECRET_PARAMS) - {"ticket"}))
    if in_url:
        await refuse(
            ws,
            "unauthenticated",
            f"never put a token in a URL ({', '.join(in_url)}): logs keep URLs. Send "
            '{"type": "auth", "token": ...} as the first message, or connect with '
            "?ticket= from POST /api/ws-ticket",
        )
        return None
    try:
        ticket = ws.query_params.get("ticket")
        if ticket is not None:
            return await authenticator.redeem_ticket(ticket)
        return await _first_message_auth(ws, authenticator, settings.ws_auth_timeout_s)
    except AuthError as exc:
        await refuse(ws, exc.code, exc.reason)
    except AskError as exc:
        # Redis is away: the credential may be fine, the client should come back.
        await refuse(ws, exc.code, exc.reason, close_code=TRY_AGAIN_LATER)
    except WebSocketDisconnect:
        pass
    return None


async def _first_message_auth(
    ws: WebSocket, authenticator: Authenticator, timeout: float
) -> Caller | None:
    try:
        async with asyncio.timeout(timeout):
            frame = await ws.receive()
    except TimeoutError:
        raise AuthError(
            f'no {{"type": "auth", "token": ...}} message within {timeout:g} s',
            code="unauthenticated",
        ) from None
    if frame["type"] == "websocket.disconnect":
        return None
    message = _first_message(frame)
    metrics.WS_MESSAGES.labels("ws", "received", "auth" if message else "other").inc()
    if message is None:
        raise AuthError(
            'authenticate first: send {"type": "auth", "token": ...}, or connect with '
            "?ticket= from POST /api/ws-ticket",
            code="unauthenticated",
        )
    token = message.get("token")
    if not isinstance(token, str) or not token:
        raise AuthError("an auth message needs a string `token`", code="unauthenticated")
    caller = await authenticator.authenticate(token)
    await ws.send_text(json.dumps(authenticated(caller, message.get("id"))))
    metrics.WS_MESSAGES.labels("ws", "sent", "authenticated").inc()
    return caller
