"""The PWA in Chromium (issue: the PWA), on a private stack with the instant model.

1. What the app costs to fetch: the page and every asset it loads, as sent
   (gzip where the gateway compresses) and uncompressed.
2. Opening it: a first visit (a fresh browser profile: nothing cached, the service
   worker installs), a return visit (shell from the service worker's cache), and
   an offline open (the gateway stopped): the time from navigation to the
   connection status line ("Connected", or "Connection lost" offline).
3. A typed message, measured in the page: from Enter to the first words of the
   reply on screen, and to the whole reply on screen.
"""

import asyncio
import functools
import tempfile
import time
from pathlib import Path

from playwright.async_api import Browser, Page, async_playwright

from bench.report import Row, Section, spread_row
from bench.system_bench import service_env
from services.gateway.frontend import Frontend
from tests.browser.conftest import chromium_path
from tests.support.redis_server import local_redis
from tests.support.services import ROOT, ServiceProcess, running, start_service

OPEN_TARGET_S = 1.0
FIRST_WORDS_TARGET_S = 0.25
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]  # fmt: skip

# Run in the page: Enter in the text field, then the times (ms) until the new
# turn's reply first has text, and until it is done.
TYPED = """
async (text) => {
  const field = document.querySelector('#message');
  const before = document.querySelectorAll('li.turn').length;
  field.value = text;
  field.dispatchEvent(new Event('input'));
  return await new Promise((resolve) => {
    let first = null;
    const started = performance.now();
    const check = () => {
      const turn = document.querySelectorAll('li.turn')[before];
      if (!turn) return;
      const reply = turn.querySelector('.reply').textContent;
      if (first === null && reply) first = performance.now() - started;
      if (turn.dataset.state === 'done') {
        observer.disconnect();
        resolve([first, performance.now() - started]);
      }
    };
    const observer = new MutationObserver(check);
    observer.observe(document.body, {subtree: true, childList: true, characterData: true,
                                     attributes: true});
    field.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', bubbles: true}));
  });
}
"""


def shell_bytes() -> tuple[int, int, int]:
    """(files, bytes uncompressed, bytes as sent with gzip) of the page and its assets."""
    frontend = Frontend.load(ROOT / "frontend")
    plain = sent = files = 0
    for url in frontend.precache:
        if url == "/":
            found = frontend.document("index.html")
        elif url.startswith(frontend.asset_base + "/"):
            found = frontend.asset(frontend.version, url.removeprefix(frontend.asset_base + "/"))
        else:
            found = frontend.document(url.lstrip("/"))
        if found is None or url.endswith((".md", ".txt")):
            continue  # the vendored licence and notes are cached, never loaded by the page
        files += 1
        plain += len(found.identity.body)
        sent += len((found.gzipped or found.identity).body)
    return files, plain, sent


async def open_until(page: Page, url: str, status: str) -> float:
    began = time.perf_counter()
    await page.goto(url)
    await page.get_by_role("status").filter(has_text=status).wait_for()
    return time.perf_counter() - began


async def measure(browser: Browser, gateway: ServiceProcess, runs: int) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {k: [] for k in ("cold", "warm", "offline", "first", "whole")}
    url = gateway.base_url + "/"
    for _ in range(runs):
        context = await browser.new_context()
        found["cold"].append(await open_until(await context.new_page(), url, "Connected"))
        await context.close()
    context = await browser.new_context()
    page = await context.new_page()
    await open_until(page, url, "Connected")
    await page.evaluate("navigator.serviceWorker.ready")
    for _ in range(runs):
        found["warm"].append(await open_until(page, url, "Connected"))
    for n in range(runs * 2):
        first, whole = await page.evaluate(TYPED, f"Typed thought number {n} about rivers.")
        found["first"].append(first / 1000)
        found["whole"].append(whole / 1000)
    gateway.stop()
    for _ in range(runs):
        found["offline"].append(await open_until(page, url, "Connection lost"))
    await context.close()
    return found


async def in_browser(runs: int) -> dict[str, list[float]] | None:
    path = chromium_path()
    if path is None:
        return None
    with tempfile.TemporaryDirectory(prefix="lva-pwa-bench-") as tmp, local_redis() as redis:
        env = service_env(redis.url, Path(tmp) / "archive.db")
        with running(["archiver", "responder"], env, Path(tmp)):
            gateway = start_service("gateway", env, Path(tmp))
            try:
                async with async_playwright() as pw:
                    browser = await pw.chromium.launch(executable_path=path, args=ARGS)
                    try:
                        return await measure(browser, gateway, runs)
                    finally:
                        await browser.close()
            finally:
                gateway.stop()


def run_pwa(quick: bool) -> list[Section]:
    files, plain, sent = shell_bytes()
    rows = [
        Row(f"the page and what it loads, {files} files, as sent (gzip) / uncompressed",
            f"{sent / 1024:,.1f} KiB / {plain / 1024:,.1f} KiB"),
    ]  # fmt: skip
    notes = [
        "Debian's Chromium, headless, driven by Playwright; every service a process "
        "on a private Redis; the model answers at once (bench.instant_llm), so the "
        "numbers are the app's and the system's, not a model's.",
        "Open: from navigation to the status line; first visit in a fresh profile, "
        "return visits by reload with the service worker installed, offline with the "
        "gateway stopped (the shell comes from the worker's cache).",
        "Typed: measured in the page with a MutationObserver, from Enter to the "
        "reply's first text on screen and to its final state.",
    ]
    found = asyncio.run(in_browser(3 if quick else 10))
    if found is None:
        notes.append("Chromium is not installed (make browser): the browser rows were skipped.")
    else:
        ms_row = functools.partial(spread_row, unit="ms", digits=0)
        rows += [
            ms_row("first visit → connected", found["cold"], OPEN_TARGET_S),
            ms_row("return visit → connected", found["warm"], OPEN_TARGET_S),
            ms_row("offline open → app shown", found["offline"], OPEN_TARGET_S),
            ms_row("typed, Enter → first words on screen", found["first"],
                   FIRST_WORDS_TARGET_S),
            ms_row("typed, Enter → whole reply on screen", found["whole"]),
        ]  # fmt: skip
    return [Section("pwa", "The PWA in Chromium", rows, notes)]
