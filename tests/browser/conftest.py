"""The PWA in a real browser: Debian's Chromium driven by Playwright, against the
real services (Redis, archiver, responder, transcriber with the embedded Whisper,
gateway), its microphone fed from a speech file.

The language model is the OpenAI wire-format server, so a reply can be made to
stream slowly enough to be seen in pieces and to be cut short; the responder
talks to it with the real openai SDK.

Without Chromium these tests are skipped, and the run says so at its end; with
REQUIRE_BROWSER=1 (CI) a missing browser fails them instead.
"""

import os
import shutil
import wave
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    ViewportSize,
    async_playwright,
)

from tests.support.redis_server import local_redis
from tests.support.services import ROOT, ServiceProcess, running, start_service
from tests.wire.openai_server import OpenAIWireServer

FIXTURES = ROOT / "tests" / "fixtures" / "audio"
# Where the run leaves its screenshots for people to look at (see the README).
SCREENSHOTS = ROOT / "var" / "screenshots"
SPOKEN = "I am learning about photosynthesis and how plants turn light into sugar."
# Seconds between the model's pieces: slow enough for a test to see a partial reply.
SLOW_PIECES = 0.12

NO_BROWSER = "Chromium is not installed (apt-get install chromium)"
_skipped_reason: list[str] = []


def chromium_path() -> str | None:
    for candidate in (
        os.environ.get("CHROMIUM_PATH"),
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
    ):
        if candidate and Path(candidate).exists():
            return candidate
    return shutil.which("chromium")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    browser_items = [i for i in items if "tests/browser/" in str(i.fspath)]
    if not browser_items or chromium_path():
        return
    if os.environ.get("REQUIRE_BROWSER") == "1":
        return  # the `browser` fixture fails them, saying why
    reason = f"{NO_BROWSER}: the PWA's browser tests did not run"
    _skipped_reason.append(reason)
    for item in browser_items:
        item.add_marker(pytest.mark.skip(reason=reason))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _skipped_reason:
        terminalreporter.write_sep("!", f"SKIPPED: {_skipped_reason[0]}", yellow=True)


def fake_microphone_file(directory: Path) -> Path:
    """The spoken sentence with silence around it: Chromium loops the file, and a
    recording that starts in the silence hears the whole sentence."""
    with wave.open(str(FIXTURES / "sentence1.wav"), "rb") as src:
        params = src.getparams()
        frames = src.readframes(src.getnframes())
    silence = b"\x00" * (params.sampwidth * params.nchannels) * params.framerate
    path = directory / "microphone.wav"
    with wave.open(str(path), "wb") as out:
        out.setparams(params)
        out.writeframes(silence[: len(silence) // 2] + frames + silence * 2)
    return path


@dataclass
class Stack:
    services: dict[str, ServiceProcess]
    llm: OpenAIWireServer
    log_dir: Path
    env: dict[str, str]

    @property
    def url(self) -> str:
        return self.services["gateway"].base_url

    def stop_gateway(self) -> None:
        self.services["gateway"].stop()

    def start_gateway(self, **env: str) -> None:
        """The gateway again, on the same port (the same origin for the browser)."""
        port = self.services["gateway"].port
        self.services["gateway"] = start_service(
            "gateway", {**self.env, **env}, self.log_dir, label="gateway-again", port=port
        )


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("browser")
    llm = OpenAIWireServer()
    llm.start()
    try:
        with local_redis() as redis:
            env = {
                "REDIS_URL": redis.url,
                "LLM_PROVIDER": "openai",
                "LLM_BASE_URL": llm.base_url,
                "OPENAI_API_KEY": "test-key",
                "LLM_MAX_RETRIES": "0",
                "STT_PROVIDER": "local",
                "DATABASE_URL": f"sqlite:///{tmp / 'archive.db'}",
                "REPLY_TIMEOUT": "90",
            }
            with running(["archiver", "responder", "transcriber", "gateway"], env, tmp) as services:
                yield Stack(services, llm, tmp, env)
    finally:
        llm.stop()


@pytest.fixture(autouse=True)
def _fresh_model(stack: Stack) -> None:
    stack.llm.reset()
    stack.llm.echo = True
    stack.llm.piece_delay = SLOW_PIECES


@pytest.fixture(scope="package")
async def browser(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Browser]:
    path = chromium_path()
    if path is None:
        pytest.fail(f"REQUIRE_BROWSER=1 but {NO_BROWSER}")
    microphone = fake_microphone_file(tmp_path_factory.mktemp("microphone"))
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=path,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={microphone}",
            ],
        )
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Watched:
    """A page, and everything it did that a test must rule out."""

    page: Page
    context: BrowserContext
    origin: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    foreign_requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def assert_clean(self, *, allow: tuple[str, ...] = ()) -> None:
        assert self.foreign_requests == [], self.foreign_requests
        assert self.page_errors == [], self.page_errors
        assert self.dialogs == [], self.dialogs
        errors = [e for e in self.console_errors if not any(a in e for a in allow)]
        assert errors == [], errors


async def open_app(
    browser: Browser, stack: Stack, *, viewport: ViewportSize | None = None, **options: Any
) -> Watched:
    options.setdefault("permissions", ["microphone"])
    context = await browser.new_context(
        viewport=viewport or {"width": 1280, "height": 860}, **options
    )
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(stack.url))
    page = await context.new_page()
    watched = Watched(page, context, origin)

    async def guard(route: Any) -> None:
        url = route.request.url
        if url.startswith(origin) or url.startswith("data:") or url.startswith("blob:"):
            await route.continue_()
        else:
            watched.foreign_requests.append(url)
            await route.abort()

    await context.route("**/*", guard)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            watched.console_errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: watched.page_errors.append(str(exc)))

    async def on_dialog(dialog: Any) -> None:
        watched.dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    await page.goto(stack.url + "/")
    await page.get_by_role("status").filter(has_text="Connected").wait_for()
    return watched


@pytest.fixture
async def app(browser: Browser, stack: Stack) -> AsyncIterator[Watched]:
    watched = await open_app(browser, stack)
    try:
        yield watched
    finally:
        await watched.context.close()
