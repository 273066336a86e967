"""Security headers on every HTTP response, so the PWA runs only its own code."""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# No 'unsafe-inline' and no 'unsafe-eval' anywhere: the PWA has no inline script or
# style, and uses Vue's runtime-only build with render functions, so no template
# compiler needs eval. blob: and data: are for the clips it records and plays.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self'; worker-src 'self'; manifest-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)

# FastAPI's /docs and /redoc pages load Swagger UI and ReDoc from a CDN and start
# them with an inline script: they get a policy of their own that allows just that.
DOCS_PATHS = ("/docs", "/redoc")
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; img-src 'self' data: https:; "
    "worker-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    # The PWA records the learner's voice, and nothing here needs a camera or a place.
    (b"permissions-policy", b"microphone=(self), camera=(), geolocation=()"),
)


class SecurityHeaders:
    """Adds `SECURITY_HEADERS` to the start of each HTTP response; a response that
    sets one of them itself keeps its own. Bodies and WebSockets pass untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        docs = str(scope.get("path", "")).startswith(DOCS_PATHS)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if docs:
                    headers.append((b"content-security-policy", DOCS_POLICY.encode()))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
