"""The PWA of `frontend/`, read into memory at start and served at "/".

Assets are served under a version taken from the files' contents, so a browser may
keep them forever; the few documents that name them (the page, the service worker,
the manifest) are revalidated on every load, so a deploy is seen at once.
"""

import gzip
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, cast

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from services.gateway import api
from services.gateway.deps import get_backend, get_redis

log = logging.getLogger(__name__)

INDEX, SERVICE_WORKER, MANIFEST = "index.html", "sw.js", "manifest.webmanifest"
DOCUMENTS = (INDEX, SERVICE_WORKER, MANIFEST)
ASSET_PREFIX = "/assets"

DOCUMENT_CACHE = "no-cache"
ASSET_CACHE = "public, max-age=31536000, immutable"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".webmanifest": "application/manifest+json",
    ".json": "application/json",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".wav": "audio/wav",
}
DEFAULT_CONTENT_TYPE = "application/octet-stream"
# PNG and WAV barely shrink, and below about a kilobyte gzip's own header eats the gain.
COMPRESSIBLE = {"application/manifest+json", "application/json", "image/svg+xml"}
GZIP_MIN_BYTES = 1024


def content_type(path: str) -> str:
    return CONTENT_TYPES.get(PurePosixPath(path).suffix.lower(), DEFAULT_CONTENT_TYPE)


def content_version(files: Mapping[str, bytes]) -> str:
    """First 12 hex digits of a sha256 over the files, in the order of their paths."""
    digest = hashlib.sha256()
    for path in sorted(files):
        name, body = path.encode(), files[path]
        # Lengths first, so that moving bytes from one file to the next changes the hash.
        digest.update(b"%d:%s%d:" % (len(name), name, len(body)))
        digest.update(body)
    return digest.hexdigest()[:12]


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def accepts(header: str, wanted: str) -> bool:
    """Whether an Accept or Accept-Encoding header names `wanted` with a q above 0.

    Wildcards do not count: `*/*` is what API clients send, and they get JSON at "/".
    """
    for item in header.split(","):
        name, _, params = item.partition(";")
        if name.strip().lower() != wanted:
            continue
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


def _matches(if_none_match: str | None, etag: str) -> bool:
    if if_none_match is None:
        return False
    # If-None-Match compares weakly (RFC 9110 13.1.2).
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


@dataclass(frozen=True)
class Encoded:
    body: bytes
    etag: str


@dataclass(frozen=True)
class StaticFile:
    """One file's bytes, gzipped too where that pays, and the headers to serve them."""

    content_type: str
    cache_control: str
    identity: Encoded
    gzipped: Encoded | None

    @classmethod
    def build(cls, body: bytes, media_type: str, cache_control: str) -> "StaticFile":
        gzipped = None
        textual = media_type.startswith("text/") or media_type in COMPRESSIBLE
        if textual and len(body) > GZIP_MIN_BYTES:
            # mtime=0: the same file gives the same bytes, so the same ETag, on every replica.
            packed = gzip.compress(body, compresslevel=9, mtime=0)
            if len(packed) < len(body):
                gzipped = Encoded(packed, _etag(packed))
        return cls(media_type, cache_control, Encoded(body, _etag(body)), gzipped)

    def response(self, request: Request, *, vary: tuple[str, ...] = ()) -> Response:
        use_gzip = self.gzipped is not None and accepts(
            request.headers.get("accept-encoding", ""), "gzip"
        )
        chosen = self.gzipped if use_gzip and self.gzipped is not None else self.identity
        headers = {"ETag": chosen.etag, "Cache-Control": self.cache_control}
        varies = vary + (("Accept-Encoding",) if self.gzipped is not None else ())
        if varies:
            headers["Vary"] = ", ".join(varies)
        if _matches(request.headers.get("if-none-match"), chosen.etag):
            return Response(status_code=304, headers=headers)
        if use_gzip:
            headers["Content-Encoding"] = "gzip"
        return Response(chosen.body, headers=headers, media_type=self.content_type)


class Frontend:
    """Every file of the PWA, in memory: the documents at its top, every other file an
    asset at `/assets/{version}/{path}`."""

    def __init__(self, files: Mapping[str, bytes], values: Mapping[str, str] | None = None) -> None:
        """`files`: bytes by path relative to the PWA's folder, with `/` between parts;
        `values`: more placeholders for the documents (the server's limits, say)."""
        self.version = content_version(files)
        self._values = dict(values or {})
        self.asset_base = f"{ASSET_PREFIX}/{self.version}"
        self._assets = {
            path: StaticFile.build(body, content_type(path), ASSET_CACHE)
            for path, body in files.items()
            if path not in DOCUMENTS
        }
        self.precache = ["/", f"/{MANIFEST}", *(self.asset_url(p) for p in sorted(self._assets))]
        self._documents = {
            name: StaticFile.build(
                self._fill(name, files[name]), content_type(name), DOCUMENT_CACHE
            )
            for name in DOCUMENTS
            if name in files
        }

    @classmethod
    def load(cls, directory: Path, values: Mapping[str, str] | None = None) -> "Frontend":
        """The PWA in `directory`; none (only the health check at "/") if it is missing."""
        if not directory.is_dir():
            log.warning("no PWA at %s: / answers only the health check", directory)
            return cls({}, values)
        files: dict[str, bytes] = {}
        for path in sorted(directory.rglob("*")):
            relative = path.relative_to(directory)
            # Dotfiles (.gitkeep, .DS_Store) are no part of the app.
            if path.is_file() and not any(part.startswith(".") for part in relative.parts):
                files[relative.as_posix()] = path.read_bytes()
        frontend = cls(files, values)
        log.info("PWA %s: %d files from %s", frontend.version, len(files), directory)
        return frontend

    def asset_url(self, path: str) -> str:
        return f"{self.asset_base}/{path}"

    def document(self, name: str) -> StaticFile | None:
        return self._documents.get(name)

    def asset(self, version: str, path: str) -> StaticFile | None:
        """The asset, or None for another version than this one: an old page after a
        deploy must not cache today's bytes under yesterday's immutable URL."""
        return self._assets.get(path) if version == self.version else None

    def _fill(self, name: str, body: bytes) -> bytes:
        text = body.decode("utf-8")
        text = text.replace("__ASSET_BASE__", self.asset_base)
        text = text.replace("__VERSION__", self.version)
        if name == SERVICE_WORKER:
            text = text.replace("__PRECACHE__", json.dumps(self.precache))
        for placeholder, value in self._values.items():
            text = text.replace(placeholder, value)
        return text.encode("utf-8")


def get_frontend(request: Request) -> Frontend:
    return cast(Frontend, request.app.state.frontend)


FrontendDep = Annotated[Frontend, Depends(get_frontend)]

router = APIRouter(include_in_schema=False)
GET_HEAD = ["GET", "HEAD"]


def _not_found(detail: str) -> JSONResponse:
    # no-store: what is missing now may well be there after the next deploy.
    return JSONResponse({"detail": detail}, status_code=404, headers={"Cache-Control": "no-store"})


def _for_method(request: Request, response: Response) -> Response:
    # FastAPI, unlike Starlette, does not answer HEAD for a GET route by itself.
    if request.method == "HEAD":
        return Response(status_code=response.status_code, headers=response.headers)
    return response


@router.api_route("/", methods=GET_HEAD)
async def root(request: Request, frontend: FrontendDep) -> Response:
    index = frontend.document(INDEX)
    if index is not None and accepts(request.headers.get("accept", ""), "text/html"):
        response = index.response(request, vary=("Accept",))
    else:
        # v1's contract: GET / is the health check, and API clients still call it.
        response = await api.health(get_redis(request), get_backend(request), request)
        response.headers["Vary"] = "Accept"
    return _for_method(request, response)


def _document(request: Request, frontend: Frontend, name: str) -> Response:
    found = frontend.document(name)
    if found is None:
        return _not_found(f"this gateway serves no {name}")
    return _for_method(request, found.response(request))


@router.api_route(f"/{SERVICE_WORKER}", methods=GET_HEAD)
async def service_worker(request: Request, frontend: FrontendDep) -> Response:
    return _document(request, frontend, SERVICE_WORKER)


@router.api_route(f"/{MANIFEST}", methods=GET_HEAD)
async def manifest(request: Request, frontend: FrontendDep) -> Response:
    return _document(request, frontend, MANIFEST)


@router.api_route(ASSET_PREFIX + "/{version}/{path:path}", methods=GET_HEAD)
async def asset(version: str, path: str, request: Request, frontend: FrontendDep) -> Response:
    # A lookup in memory only: no path from a request ever reaches the filesystem.
    found = frontend.asset(version, path)
    if found is None:
        if version != frontend.version:
            return _not_found("no assets of that version (a deploy since?): reload the page")
        return _not_found("no such asset")
    return _for_method(request, found.response(request))
