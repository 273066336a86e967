"""The PWA as the gateway serves it: versioned assets, filled-in documents, cache
headers, gzip, "/" for browsers and for API clients, and the security headers."""

import gzip
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from services.gateway import api
from services.gateway.frontend import Frontend, router
from services.gateway.security import CONTENT_SECURITY_POLICY, DOCS_POLICY, SecurityHeaders

ROOT = Path(__file__).resolve().parents[2]
REAL_FRONTEND = ROOT / "frontend"

INDEX = """<!doctype html>
<html><head>
<meta name="lva-version" content="__VERSION__">
<meta name="lva-max-text-chars" content="__MAX_TEXT_CHARS__">
<link rel="stylesheet" href="__ASSET_BASE__/css/app.css">
<script type="module" src="__ASSET_BASE__/js/app.js"></script>
</head><body><div id="app"></div></body></html>
"""
SERVICE_WORKER = 'const VERSION = "__VERSION__";\nconst PRECACHE = __PRECACHE__;\n'
MANIFEST = '{"icons": [{"src": "__ASSET_BASE__/icons/icon.png"}]}'
# Over a kilobyte and repetitive: worth gzipping.
BIG_SCRIPT = "export const words = [" + ", ".join(f'"word{n}"' for n in range(400)) + "];\n"

FILES: dict[str, bytes] = {
    "index.html": INDEX.encode(),
    "sw.js": SERVICE_WORKER.encode(),
    "manifest.webmanifest": MANIFEST.encode(),
    "js/app.js": BIG_SCRIPT.encode(),
    "css/app.css": b"body { margin: 0 }\n",
    "icons/icon.png": b"\x89PNG\r\n\x1a\n" + bytes(2000),
    "icons/logo.svg": b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    "icons/favicon.ico": b"\x00\x00\x01\x00",
    "vendor/README.md": b"# vendored\n",
    "vendor/LICENSE.txt": b"MIT\n",
    "data/words.json": b"[]",
    "sounds/ding.wav": b"RIFF....WAVE",
    "data/blob.bin": b"\x00\x01",
    ".gitkeep": b"",
    "js/.DS_Store": b"junk",
}


def write_site(folder: Path, files: dict[str, bytes] = FILES) -> Path:
    for name, body in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    return folder


class HealthyRedis:
    async def ping(self) -> bool:
        return True


def make_app(frontend: Frontend) -> FastAPI:
    """The frontend's routes and the security headers, with a healthy stand-in for
    what /health reads (the gateway's lifespan, which needs Redis, does not run)."""
    app = FastAPI()
    app.state.frontend = frontend
    app.state.redis = HealthyRedis()
    app.state.backend = SimpleNamespace(reply_reader_state="ok")
    app.state.connections = SimpleNamespace(open=0)
    app.add_middleware(SecurityHeaders)
    app.include_router(api.router)
    app.include_router(router)
    return app


def client_of(app: FastAPI) -> httpx.AsyncClient:
    # Identity unless a test asks for gzip, so bodies can be compared as sent.
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://gateway.test",
        headers={"Accept-Encoding": "identity"},
    )


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return write_site(tmp_path / "frontend")


@pytest.fixture
def frontend(site: Path) -> Frontend:
    return Frontend.load(site, {"__MAX_TEXT_CHARS__": "4000"})


@pytest.fixture
async def client(frontend: Frontend) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(make_app(frontend)) as client:
        yield client


def precache_of(service_worker: str) -> list[str]:
    found = re.search(r"const PRECACHE = (.*);", service_worker)
    assert found is not None, service_worker
    urls: list[str] = json.loads(found.group(1))
    return urls


# What a folder gives


def test_the_version_is_12_hex_digits_and_moves_with_any_file(site: Path) -> None:
    version = Frontend.load(site).version
    assert re.fullmatch(r"[0-9a-f]{12}", version)
    assert Frontend.load(site).version == version
    (site / "css/app.css").write_bytes(b"body { margin: 1px }\n")
    changed = Frontend.load(site).version
    assert changed != version
    (site / "css/app.css").rename(site / "css/main.css")
    assert Frontend.load(site).version not in {version, changed}


def test_the_version_tells_where_one_file_ends_and_the_next_begins() -> None:
    assert Frontend({"a": b"bc", "b": b""}).version != Frontend({"a": b"b", "b": b"c"}).version


def test_dotfiles_are_no_part_of_the_app(site: Path, frontend: Frontend) -> None:
    assert frontend.asset(frontend.version, ".gitkeep") is None
    assert frontend.asset(frontend.version, "js/.DS_Store") is None
    (site / "js/.DS_Store").write_bytes(b"other junk")
    assert Frontend.load(site).version == Frontend.load(site).version == frontend.version


async def test_the_page_names_assets_by_version(
    client: httpx.AsyncClient, frontend: Frontend
) -> None:
    page = await client.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert f'src="/assets/{frontend.version}/js/app.js"' in page.text
    assert f'href="/assets/{frontend.version}/css/app.css"' in page.text
    assert f'content="{frontend.version}"' in page.text
    assert 'content="4000"' in page.text
    assert "__" not in page.text
    manifest = await client.get("/manifest.webmanifest")
    assert manifest.json() == {"icons": [{"src": f"/assets/{frontend.version}/icons/icon.png"}]}


async def test_the_service_worker_precaches_the_shell_and_every_asset(
    client: httpx.AsyncClient, frontend: Frontend
) -> None:
    worker = await client.get("/sw.js")
    assert f'const VERSION = "{frontend.version}";' in worker.text
    assets = [name for name in FILES if "/" in name and "/." not in name]
    expected = [f"/assets/{frontend.version}/{name}" for name in sorted(assets)]
    assert precache_of(worker.text) == ["/", "/manifest.webmanifest", *expected]
    assert frontend.precache == precache_of(worker.text)
    for url in expected:
        assert (await client.get(url)).status_code == 200, url


# Headers


@pytest.mark.parametrize(
    ("url", "content_type"),
    [
        ("/sw.js", "text/javascript; charset=utf-8"),
        ("/manifest.webmanifest", "application/manifest+json"),
        ("js/app.js", "text/javascript; charset=utf-8"),
        ("css/app.css", "text/css; charset=utf-8"),
        ("icons/icon.png", "image/png"),
        ("icons/logo.svg", "image/svg+xml"),
        ("icons/favicon.ico", "image/x-icon"),
        ("vendor/README.md", "text/plain; charset=utf-8"),
        ("vendor/LICENSE.txt", "text/plain; charset=utf-8"),
        ("data/words.json", "application/json"),
        ("sounds/ding.wav", "audio/wav"),
        ("data/blob.bin", "application/octet-stream"),
    ],
)
async def test_content_types_and_cache_headers(
    client: httpx.AsyncClient, frontend: Frontend, url: str, content_type: str
) -> None:
    document = url.startswith("/")
    response = await client.get(url if document else frontend.asset_url(url))
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    expected_cache = "no-cache" if document else "public, max-age=31536000, immutable"
    assert response.headers["cache-control"] == expected_cache
    assert re.fullmatch(r'"[0-9a-f]{32}"', response.headers["etag"])


async def test_the_page_is_html_revalidated_on_every_load(client: httpx.AsyncClient) -> None:
    page = await client.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    # "/" depends on Accept, so no cache may give the page to an API client or back.
    assert page.headers["vary"] == "Accept"


@pytest.mark.parametrize("url", ["/", "/sw.js", "/manifest.webmanifest", "js/app.js"])
async def test_a_known_etag_gets_304_without_a_body(
    client: httpx.AsyncClient, frontend: Frontend, url: str
) -> None:
    url = url if url.startswith("/") else frontend.asset_url(url)
    html = {"Accept": "text/html"}
    first = await client.get(url, headers=html)
    etag = first.headers["etag"]
    for if_none_match in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = await client.get(url, headers={**html, "If-None-Match": if_none_match})
        assert again.status_code == 304, if_none_match
        assert again.content == b""
        assert again.headers["etag"] == etag
        assert again.headers["cache-control"] == first.headers["cache-control"]
    changed = await client.get(url, headers={**html, "If-None-Match": '"other"'})
    assert changed.status_code == 200
    assert changed.content == first.content


async def test_large_text_is_gzipped_for_clients_that_take_it(
    client: httpx.AsyncClient, frontend: Frontend
) -> None:
    url = frontend.asset_url("js/app.js")
    plain = await client.get(url)
    assert "content-encoding" not in plain.headers
    assert plain.content == BIG_SCRIPT.encode()
    assert plain.headers["vary"] == "Accept-Encoding"

    packed = await client.get(url, headers={"Accept-Encoding": "br, gzip;q=0.9"})
    assert packed.headers["content-encoding"] == "gzip"
    assert packed.headers["vary"] == "Accept-Encoding"
    assert int(packed.headers["content-length"]) < len(BIG_SCRIPT) // 2
    # httpx has undone the gzip: the bytes are the file's.
    assert packed.content == BIG_SCRIPT.encode()
    # Another representation, another strong ETag.
    assert packed.headers["etag"] != plain.headers["etag"]

    refused = await client.get(url, headers={"Accept-Encoding": "gzip;q=0, br"})
    assert "content-encoding" not in refused.headers


@pytest.mark.parametrize("name", ["css/app.css", "icons/icon.png", "sounds/ding.wav"])
async def test_small_text_and_binary_files_are_never_gzipped(
    client: httpx.AsyncClient, frontend: Frontend, name: str
) -> None:
    response = await client.get(frontend.asset_url(name), headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in response.headers
    assert "vary" not in response.headers


def test_the_gzip_is_the_same_on_every_replica(site: Path) -> None:
    one, two = Frontend.load(site), Frontend.load(site)
    a, b = one.asset(one.version, "js/app.js"), two.asset(two.version, "js/app.js")
    assert a is not None and b is not None and a.gzipped is not None
    assert a.gzipped == b.gzipped
    assert gzip.decompress(a.gzipped.body) == BIG_SCRIPT.encode()


async def test_head_answers_the_headers_of_get(
    client: httpx.AsyncClient, frontend: Frontend
) -> None:
    for url, headers in [("/", {"Accept": "text/html"}), (frontend.asset_url("js/app.js"), {})]:
        got = await client.get(url, headers=headers)
        head = await client.head(url, headers=headers)
        assert head.status_code == 200
        assert head.content == b""
        for name in ("content-length", "content-type", "etag", "cache-control"):
            assert head.headers[name] == got.headers[name], name


# What is not there


async def test_another_version_is_404_even_for_a_file_that_exists(
    client: httpx.AsyncClient, frontend: Frontend
) -> None:
    old = "0" * 12 if frontend.version != "0" * 12 else "1" * 12
    response = await client.get(f"/assets/{old}/js/app.js")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert "reload" in response.json()["detail"]


@pytest.mark.parametrize(
    "path",
    [
        "missing.js",
        "index.html",
        "js",
        "%2e%2e/secret.txt",
        "..%2Fsecret.txt",
        "%2e%2e%2f%2e%2e%2fsecret.txt",
        "%2Fetc%2Fpasswd",
        "js/%2e%2e/%2e%2e/secret.txt",
    ],
)
async def test_unknown_paths_are_404_and_nothing_outside_is_reached(
    client: httpx.AsyncClient, frontend: Frontend, site: Path, path: str
) -> None:
    (site.parent / "secret.txt").write_text("the gateway's settings")
    response = await client.get(f"/assets/{frontend.version}/{path}")
    assert response.status_code == 404
    # The asset route's own answer: the path reached it, and it looked only in memory.
    assert response.json() == {"detail": "no such asset"}


async def test_a_dot_dot_path_sent_raw_is_404(site: Path, frontend: Frontend) -> None:
    # httpx would resolve "..", so the request goes to the app as a server would pass it.
    (site.parent / "secret.txt").write_text("the gateway's settings")
    app = make_app(frontend)
    sent: list[Message] = []
    path = f"/assets/{frontend.version}/../secret.txt"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"gateway.test")],
        "server": ("gateway.test", 80),
        "client": ("127.0.0.1", 1234),
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["status"] == 404
    assert json.loads(sent[1]["body"]) == {"detail": "no such asset"}
    assert b"settings" not in b"".join(m.get("body", b"") for m in sent)


async def test_without_a_folder_the_gateway_serves_only_the_health_check(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="services.gateway.frontend"):
        frontend = Frontend.load(tmp_path / "nowhere")
    assert any(r.levelno == logging.WARNING and "nowhere" in r.message for r in caplog.records)
    async with client_of(make_app(frontend)) as client:
        root = await client.get("/", headers={"Accept": "text/html"})
        assert root.headers["content-type"] == "application/json"
        assert root.json()["status"] == "healthy"
        for url in ("/sw.js", "/manifest.webmanifest", f"/assets/{frontend.version}/a.js"):
            assert (await client.get(url)).status_code == 404, url


# "/" for API clients


@pytest.mark.parametrize(
    "accept", [None, "*/*", "application/json", "application/json, text/*", "text/html;q=0"]
)
async def test_api_clients_get_the_health_check_at_the_root(
    client: httpx.AsyncClient, accept: str | None
) -> None:
    if accept is None:
        del client.headers["Accept"]
    headers = {} if accept is None else {"Accept": accept}
    root = await client.get("/", headers=headers)
    health = await client.get("/health", headers=headers)
    assert root.status_code == health.status_code == 200
    assert root.headers["content-type"] == "application/json"
    assert root.json() == health.json()
    assert root.json()["service"] == "gateway"
    assert root.headers["vary"] == "Accept"


# Security headers


async def test_every_response_carries_the_security_headers(
    client: httpx.AsyncClient, frontend: Frontend
) -> None:
    for url in ("/", "/health", "/sw.js", frontend.asset_url("css/app.css"), "/assets/x/y"):
        response = await client.get(url, headers={"Accept": "text/html"})
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, url
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["permissions-policy"] == (
            "microphone=(self), camera=(), geolocation=()"
        )


def test_the_policy_allows_no_inline_code_and_no_eval() -> None:
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY


async def test_streamed_bodies_pass_whole_and_a_route_keeps_its_own_policy() -> None:
    app = FastAPI()
    app.add_middleware(SecurityHeaders)

    def pieces() -> Iterator[bytes]:
        yield from (b"one ", b"two ", b"three")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        return StreamingResponse(pieces(), media_type="text/plain")

    @app.get("/own")
    async def own() -> JSONResponse:
        return JSONResponse({}, headers={"Content-Security-Policy": "default-src 'none'"})

    async with client_of(app) as client:
        streamed = await client.get("/stream")
        assert streamed.content == b"one two three"
        assert streamed.headers["x-content-type-options"] == "nosniff"
        own_policy = await client.get("/own")
        assert own_policy.headers.get_list("content-security-policy") == ["default-src 'none'"]


async def test_websockets_pass_untouched() -> None:
    accept: Message = {"type": "websocket.accept", "headers": [(b"x-own", b"1")]}

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await send(dict(accept))

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await SecurityHeaders(endpoint)({"type": "websocket", "path": "/ws/x"}, receive, send)
    assert sent == [accept]


# The real folder


def tags(html: str) -> list[str]:
    return re.findall(r"<[^>]+>", html)


async def test_the_real_pwa_is_served_at_the_root_under_the_policy() -> None:
    if not (REAL_FRONTEND / "index.html").exists():
        pytest.skip(f"no {REAL_FRONTEND / 'index.html'} yet: the PWA is not written")
    frontend = Frontend.load(REAL_FRONTEND)
    async with client_of(make_app(frontend)) as client:
        page = await client.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "__ASSET_BASE__" not in page.text
        assert "__VERSION__" not in page.text
        # Every asset the documents name is there.
        manifest = await client.get("/manifest.webmanifest")
        named = re.findall(r"/assets/[0-9a-f]{12}/[^\"'\s)]+", page.text + manifest.text)
        assert named
        for url in named:
            assert (await client.get(url)).status_code == 200, url
        worker = await client.get("/sw.js")
        assert worker.status_code == 200
        assert "__PRECACHE__" not in worker.text

    html = (REAL_FRONTEND / "index.html").read_text()
    # What the policy would block, caught before a browser does.
    inline = [t for t in tags(html) if re.match(r"<script\b", t, re.I) and "src=" not in t]
    assert not inline, f"inline <script> (script-src 'self' blocks it): {inline}"
    styled = [t for t in tags(html) if re.search(r"\sstyle\s*=", t, re.I)]
    assert not styled, f"style= attributes (style-src 'self' blocks them): {styled}"
    handlers = [t for t in tags(html) if re.search(r"\son[a-z]+\s*=", t, re.I)]
    assert not handlers, f"on*= handler attributes (inline script): {handlers}"


async def test_the_api_docs_alone_may_load_swagger_from_its_cdn(
    client: httpx.AsyncClient,
) -> None:
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert docs.headers["content-security-policy"] == DOCS_POLICY
    assert "cdn.jsdelivr.net" in docs.text  # what the looser policy is for
    page = await client.get("/", headers={"Accept": "text/html"})
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
