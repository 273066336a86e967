"""Local HTTP servers that speak hosted providers' wire formats, for tests of real SDKs.

Each server is a FastAPI app run by uvicorn on a free 127.0.0.1 port in a
background thread. Use one as a context manager (or `start()` / `stop()`), point
the SDK at `.base_url`, script it, then inspect what the SDK sent:

    with AnthropicWireServer() as server:
        server.reply_text = "Hello there."
        server.fail_next(429)               # the next request gets a 429
        server.delay = 2.0                  # every request waits before answering
        ...
        server.requests[-1].body["model"]   # what the SDK sent

Every request's fate (failure or not) is decided when it arrives, so a request
still sleeping from an earlier test never takes a failure scripted for a later one.

Adding routes: subclass and register more handlers on `self.app` in `__init__`
(start each with `await self.intake(request)` to get recording, delay, scripted
failures and the key check for free), or add them to `server.app` of an instance.
"""

import asyncio
import json
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import uvicorn
from fastapi import FastAPI, Request, Response

__all__ = ["DEFAULT_REPLY", "RecordedRequest", "ScriptedFailure", "WireServer", "stream_pieces"]

DEFAULT_REPLY = (
    "Plants make food from sunlight. They use water and air. That process is called photosynthesis."
)

_START_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    # Header names lower-cased, as HTTP treats them.
    headers: dict[str, str]
    # Decoded JSON body, or None when the body is not JSON (e.g. multipart audio).
    body: Any
    raw: bytes


@dataclass(frozen=True)
class ScriptedFailure:
    status: int
    # Provider-specific error type; None picks the provider's usual one for the status.
    error_type: str | None = None
    message: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Intake:
    """A request as received, and the response to send instead of the normal one, if any."""

    request: RecordedRequest
    refusal: Response | None


def stream_pieces(text: str, words_per_piece: int = 2) -> list[str]:
    """`text` cut into small pieces (whitespace kept) that join back to exactly `text`."""
    tokens = re.findall(r"\S+\s*|\s+", text)
    return [
        "".join(tokens[i : i + words_per_piece]) for i in range(0, len(tokens), words_per_piece)
    ]


def truncate_words(text: str, max_words: int) -> tuple[str, bool]:
    """At most `max_words` words of `text` (one word standing for one token), and whether cut."""
    words = re.findall(r"\S+\s*|\s+", text)
    if len(text.split()) <= max_words:
        return text, False
    kept: list[str] = []
    count = 0
    for word in words:
        if not word.isspace():
            if count == max_words:
                break
            count += 1
        kept.append(word)
    return "".join(kept).rstrip(), True


def count_tokens(value: Any) -> int:
    """A rough token count of any JSON value: its words, so usage figures look plausible."""
    return max(1, len(json.dumps(value).split()))


class WireServer:
    """The scripting, recording and thread plumbing shared by every wire-format server."""

    def __init__(self, *, title: str) -> None:
        self.app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)
        self.requests: list[RecordedRequest] = []
        self._failures: deque[ScriptedFailure] = deque()
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self.reset()

    # -- scripting ---------------------------------------------------------------

    def reset(self) -> None:
        """Back to the defaults: no failures, no delay, any key accepted, no requests seen."""
        # The text every reply carries.
        self.reply_text: str = DEFAULT_REPLY
        # Seconds every request waits before any response byte (provokes client timeouts).
        self.delay: float = 0.0
        # Seconds a stream pauses after its first piece (provokes mid-stream read timeouts).
        self.stream_stall: float = 0.0
        # If true, a stream's connection is cut after its first piece, mid-body.
        self.stream_drop: bool = False
        # Seconds between a stream's pieces (a model writing one token at a time).
        self.piece_delay: float = 0.0
        # Streams by outcome: pieces sent so far in each, and the ones whose
        # client closed the connection before the last piece.
        self.stream_pieces_sent: list[int] = []
        self.streams_cut_short = 0
        # If set, only this key is accepted; otherwise any non-empty key is.
        self.api_key: str | None = None
        with self._lock:
            self._failures.clear()
            self.requests.clear()

    def fail_next(
        self,
        status: int,
        count: int = 1,
        *,
        error_type: str | None = None,
        message: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """The next `count` requests get this error status in the provider's error format."""
        failure = ScriptedFailure(status, error_type, message, dict(headers or {}))
        with self._lock:
            self._failures.extend([failure] * count)

    @property
    def last_request(self) -> RecordedRequest:
        with self._lock:
            if not self.requests:
                raise AssertionError(f"{type(self).__name__} has received no request")
            return self.requests[-1]

    # -- for route handlers --------------------------------------------------------

    async def intake(self, request: Request) -> Intake:
        """Record the request, then apply the scripted failure, the delay and the key check."""
        raw = await request.body()
        body: Any = None
        if "json" in request.headers.get("content-type", ""):
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        recorded = RecordedRequest(
            method=request.method,
            path=request.url.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            raw=raw,
        )
        with self._lock:
            self.requests.append(recorded)
            failure = self._failures.popleft() if self._failures else None
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        if failure is not None:
            return Intake(recorded, self.error_response(failure))
        key = self.presented_key(recorded)
        if not key or (self.api_key is not None and key != self.api_key):
            return Intake(recorded, self.auth_error_response(bool(key)))
        return Intake(recorded, None)

    def presented_key(self, request: RecordedRequest) -> str | None:
        """The credential the client sent; subclasses accept their provider's headers."""
        auth = request.headers.get("authorization", "")
        if auth.startswith("Bearer "):
            return auth.removeprefix("Bearer ").strip() or None
        return None

    def error_response(self, failure: ScriptedFailure) -> Response:
        raise NotImplementedError

    def auth_error_response(self, key_present: bool) -> Response:
        raise NotImplementedError

    def stream_started(self) -> int:
        """Count a new stream; returns its index in `stream_pieces_sent`."""
        with self._lock:
            self.stream_pieces_sent.append(0)
            return len(self.stream_pieces_sent) - 1

    def piece_sent(self, stream: int) -> None:
        with self._lock:
            self.stream_pieces_sent[stream] += 1

    def stream_left(self, finished: bool) -> None:
        if not finished:
            with self._lock:
                self.streams_cut_short += 1

    async def after_first_piece(self) -> None:
        """Where a stream's scripted trouble happens: a stall, then maybe a cut connection."""
        if self.stream_stall > 0:
            await asyncio.sleep(self.stream_stall)
        if self.stream_drop:
            # Raised inside the body iterator, uvicorn closes the socket without
            # ending the chunked body, as a proxy that drops the connection does.
            raise ConnectionAbortedError("scripted connection drop")

    # -- lifecycle -------------------------------------------------------------------

    @property
    def root_url(self) -> str:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def base_url(self) -> str:
        """What the provider's SDK takes as `base_url`."""
        return self.root_url

    def start(self) -> Self:
        if self._thread is not None:
            return self
        # Bound here, not by uvicorn, so the port is known before the thread runs.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            loop="asyncio",
            http="h11",
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name=f"{type(self).__name__}-{self._port}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise RuntimeError(f"{type(self).__name__} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        # No graceful wait: a test may leave a request sleeping in `delay`.
        server.should_exit = True
        server.force_exit = True
        thread.join(timeout=_START_TIMEOUT_S)
        self._port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
