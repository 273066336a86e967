"""The PWA as a learner uses it, in Chromium, against the real services."""

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Locator, Page, ViewportSize

from tests.browser.conftest import SCREENSHOTS, SPOKEN, Stack, Watched, open_app
from tests.support.services import ROOT
from tests.support.wer import word_error_rate

pytestmark = pytest.mark.slow

# What a browser logs by itself while the server is down (not the app's errors).
OFFLINE_NOISE = ("WebSocket connection to", "ERR_CONNECTION_REFUSED", "Failed to load resource")


def last_turn(page: Page) -> Locator:
    return page.locator("li.turn").last


async def send_text(page: Page, text: str) -> Locator:
    count = await page.locator("li.turn").count()
    field = page.get_by_label("Type a message")
    await field.fill(text)
    await field.press("Enter")
    turn = page.locator("li.turn").nth(count)
    await turn.wait_for()
    return turn


async def wait_state(turn: Locator, state: str, timeout: float = 60_000) -> None:
    await turn.and_(turn.page.locator(f'[data-state="{state}"]')).wait_for(timeout=timeout)


async def snapshots_until_done(turn: Locator, timeout: float = 60.0) -> list[tuple[str, str, str]]:
    """(what was heard, the reply, the turn's state) each time any of them changed."""
    seen: list[tuple[str, str, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = await turn.evaluate(
            "t => [t.querySelector('.said').textContent, t.querySelector('.reply').textContent,"
            " t.dataset.state]"
        )
        state = (str(snap[0]), str(snap[1]), str(snap[2]))
        if not seen or seen[-1] != state:
            seen.append(state)
        if state[2] in ("done", "cancelled", "error"):
            return seen
        await asyncio.sleep(0.02)
    raise AssertionError(f"the reply did not finish: {seen[-3:]}")


async def archived(stack: Stack, session: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        response = await client.get(f"/api/session/{session}/history")
    assert response.status_code == 200, response.text
    return list(response.json()["history"])


async def until_searchable(stack: Stack, word: str) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        for _ in range(100):
            body = (await client.post("/api/search", json={"query": word})).json()
            if body["count"]:
                return
            await asyncio.sleep(0.2)
    raise AssertionError(f"{word!r} never reached the archive")


async def session_of(page: Page) -> str:
    return str(json.loads(await page.evaluate("localStorage.getItem('lva:session')")))


async def press_talk(page: Page) -> Locator:
    """Press (and keep holding) the talk button; the recording state, once shown."""
    box = await page.get_by_role("button", name="Hold to talk").bounding_box()
    assert box is not None
    await page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    await page.mouse.down()
    recording = page.locator(".recording-state.on")
    await recording.wait_for()
    return recording


async def test_holding_talk_sends_speech_and_the_reply_streams_in(app: Watched) -> None:
    page = app.page
    recording = await press_talk(page)
    await asyncio.sleep(2.0)
    # While recording: elapsed time, and a level that moves with the speech.
    assert "Recording 0:0" in (await recording.inner_text())
    level = await page.get_by_role("meter", name="Input level").get_attribute("aria-valuenow")
    assert level is not None and int(level) > 0
    await asyncio.sleep(5.5)
    await page.mouse.up()

    seen = await snapshots_until_done(last_turn(page), timeout=90)
    heard, final, state = seen[-1]
    assert state == "done", seen
    assert word_error_rate(SPOKEN, heard) <= 0.5, heard
    # What was heard shows before the companion's first words...
    assert any(s[0] == heard and s[1] == "" for s in seen), seen
    # ...and the reply arrives in pieces, each a beginning of the final text.
    partial = [s[1] for s in seen if s[1] and s[1] != final]
    assert partial, seen
    assert all(final.startswith(p) for p in partial), seen
    assert await last_turn(page).locator(".timings").inner_text()
    app.assert_clean()


async def test_a_typed_message_is_answered_and_found_with_ctrl_k(
    app: Watched, stack: Stack
) -> None:
    page = app.page
    await page.evaluate(
        """() => { window.shift = 0; new PerformanceObserver(list => { for (const e of
        list.getEntries()) if (!e.hadRecentInput) window.shift += e.value; })
        .observe({type: 'layout-shift', buffered: true}); }"""
    )
    turn = await send_text(page, "Zebras have stripes that confuse biting flies.")
    await wait_state(turn, "done")
    # Words streaming in move nothing already on the screen (cumulative layout shift).
    assert await page.evaluate("window.shift") < 0.02
    assert "Zebras have stripes" in await turn.locator(".reply").inner_text()
    timings = turn.locator(".timings")
    assert "total" in await timings.inner_text()
    assert "to first words" in (await timings.get_attribute("title") or "")

    await until_searchable(stack, "zebras")
    await page.keyboard.press("Control+K")
    search = page.get_by_role("searchbox", name="Search your thoughts")
    await search.wait_for()
    assert await search.evaluate("el => el === document.activeElement")
    await search.press_sequentially("zebras", delay=30)
    mark = page.get_by_role("list", name="Search results").locator("mark").first
    await mark.wait_for()
    assert (await mark.inner_text()).lower() == "zebras"

    await page.get_by_role("list", name="Search results").get_by_role("button").first.click()
    history = page.get_by_role("region", name="Session history")
    await history.wait_for()
    assert "Zebras have stripes" in await history.inner_text()
    await page.keyboard.press("Escape")
    await search.wait_for(state="hidden")
    app.assert_clean()


async def test_markup_the_learner_typed_stays_text_everywhere(app: Watched, stack: Stack) -> None:
    page = app.page
    payload = "<img src=x onerror=alert(1)> and <script>alert(2)</script> quokkas"
    turn = await send_text(page, payload)
    await wait_state(turn, "done")
    assert payload in await turn.locator(".said").inner_text()
    assert payload in await turn.locator(".reply").inner_text()

    await until_searchable(stack, "quokkas")
    await page.get_by_role("button", name="Search").click()
    await page.get_by_role("searchbox", name="Search your thoughts").fill("quokkas")
    results = page.get_by_role("list", name="Search results")
    await results.locator("mark").first.wait_for()
    assert "<img src=x onerror=alert(1)>" in await results.inner_text()
    await results.get_by_role("button").first.click()
    history = page.get_by_role("region", name="Session history")
    await history.wait_for()
    assert "<script>alert(2)</script>" in await history.inner_text()

    # Nothing the learner typed became an element, and nothing ran.
    assert await page.locator("img[src='x'], .app script, dialog script").count() == 0
    assert await page.evaluate("document.scripts.length") == 1
    app.assert_clean()


async def test_stop_cuts_a_streaming_reply_short(app: Watched, stack: Stack) -> None:
    stack.llm.piece_delay = 0.4
    page = app.page
    said = "Please tell me slowly about the water cycle, clouds, rain, rivers and the sea."
    turn = await send_text(page, said)
    await wait_state(turn, "streaming")
    await page.get_by_role("button", name="Stop").click()
    await wait_state(turn, "cancelled", timeout=10_000)
    reply = await turn.locator(".reply").inner_text()
    assert len(reply) < len(f"You said: {said}"), reply
    assert "Stopped" in await turn.inner_text()
    for _ in range(50):
        if stack.llm.streams_cut_short:
            break
        await asyncio.sleep(0.1)
    # The model stopped writing too, not only the page.
    assert stack.llm.streams_cut_short >= 1
    app.assert_clean()


async def test_offline_the_app_opens_with_its_conversation_and_delivers_queued_messages_once(
    browser: Browser, stack: Stack
) -> None:
    app = await open_app(browser, stack)
    page = app.page
    try:
        turn = await send_text(page, "Otters hold hands while they sleep.")
        await wait_state(turn, "done")
        session = await session_of(page)
        # The service worker has the shell before the server goes away.
        await page.wait_for_function("navigator.serviceWorker.controller !== null || true")
        await page.evaluate("navigator.serviceWorker.ready")
        stack.stop_gateway()
        try:
            await page.reload()
            await page.get_by_text("Otters hold hands while they sleep.").first.wait_for()
            await page.get_by_role("status").filter(has_text="Connection lost").wait_for()
            queued = await send_text(page, "Beavers build dams with their teeth.")
            await queued.get_by_text("Waiting for a connection").wait_for()
        finally:
            stack.start_gateway()
        # Delivered when the connection is back (its next retry, or "Retry now").
        await wait_state(queued, "done")
        assert "Beavers build dams" in await queued.locator(".reply").inner_text()
        for _ in range(50):
            history = await archived(stack, session)
            if any("Beavers" in h["user_text"] for h in history):
                break
            await asyncio.sleep(0.2)
        # Once more after a pause: a second delivery would have shown by now.
        await asyncio.sleep(2)
        history = await archived(stack, session)
        assert [h["user_text"] for h in history].count("Beavers build dams with their teeth.") == 1
        assert await page.locator("li.turn").count() == 2
        app.assert_clean(allow=OFFLINE_NOISE)
    finally:
        await app.context.close()


# What the screenshots show: a short conversation, the replies scripted at the model.
CONVERSATION = [
    (
        "How do bees find their way home?",
        "Bees navigate by the sun and remember landmarks around their hive. Some even dance"
        " to tell others where flowers are. What made you curious about bees?",
    ),
    (
        "I saw one doing a little dance on a flower.",
        "That waggle dance points the way to food: its angle shows the direction, its length"
        " the distance. Do you want to find out how other bees read it?",
    ),
]


async def test_the_main_screen_at_phone_and_desktop_width_light_and_dark(
    browser: Browser, stack: Stack
) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    stack.llm.piece_delay = 0
    stack.llm.echo = False
    sizes: dict[str, ViewportSize] = {
        "phone": {"width": 360, "height": 780},
        "desktop": {"width": 1280, "height": 860},
    }
    for name, viewport in sizes.items():
        for scheme in ("light", "dark"):
            app = await open_app(browser, stack, viewport=viewport, color_scheme=scheme)
            page = app.page
            try:
                for said, reply in CONVERSATION:
                    stack.llm.reply_text = reply
                    await wait_state(await send_text(page, said), "done")
                await page.locator("body").click(position={"x": 2, "y": 200})
                # Nothing wider than the screen: no sideways scrolling on a phone.
                assert await page.evaluate(
                    "document.documentElement.scrollWidth <= window.innerWidth"
                )
                await page.screenshot(path=str(SCREENSHOTS / f"main-{name}-{scheme}.png"))
                app.assert_clean()
            finally:
                await app.context.close()


async def test_every_control_has_a_name_and_a_visible_keyboard_focus(app: Watched) -> None:
    page = app.page
    unnamed = await page.evaluate(
        """() => [...document.querySelectorAll('button, input, textarea, [tabindex]')]
        .filter(el => !(el.getAttribute('aria-label') || (el.labels && el.labels.length)
                        || el.textContent.trim() || el.title))
        .map(el => el.outerHTML)"""
    )
    assert unnamed == []
    focused: list[str] = []
    for _ in range(12):
        await page.keyboard.press("Tab")
        info = await page.evaluate(
            """() => { const el = document.activeElement; const s = getComputedStyle(el);
            return [el.tagName + ':' + (el.getAttribute('aria-label') || el.textContent.trim()
                    || el.id), s.outlineStyle, s.outlineWidth]; }"""
        )
        if str(info[0]).startswith("BODY:"):
            break  # past the last control
        assert info[1] != "none" and info[2] != "0px", info
        focused.append(str(info[0]))
    assert any("Hold to talk" in f for f in focused), focused
    assert any("TEXTAREA" in f for f in focused), focused
    assert any("Search" in f for f in focused), focused
    app.assert_clean()


async def test_the_space_bar_holds_to_talk_and_a_tap_is_explained(app: Watched) -> None:
    page = app.page
    # A tap on the button is not speech: nothing is sent, and the page says why.
    await page.get_by_role("button", name="Hold to talk").click()
    await page.get_by_text("Hold the button down while you speak").wait_for()
    assert await page.locator("li.turn").count() == 0
    # Space, held with the focus outside any text field, records until let go.
    await page.locator("body").click(position={"x": 5, "y": 300})
    await page.keyboard.down("Space")
    await page.locator(".recording-state.on").wait_for()
    await asyncio.sleep(1.5)
    await page.keyboard.up("Space")
    turn = last_turn(page)
    await turn.wait_for()
    seen = await snapshots_until_done(turn, timeout=90)
    assert seen[-1][2] == "done", seen
    app.assert_clean()


async def test_a_denied_microphone_is_explained_and_typing_still_works(stack: Stack) -> None:
    from playwright.async_api import async_playwright

    from tests.browser.conftest import chromium_path

    path = chromium_path()
    assert path is not None
    async with async_playwright() as pw:
        # No fake consent: headless Chromium denies the microphone.
        browser = await pw.chromium.launch(
            executable_path=path,
            args=["--no-sandbox", "--disable-gpu", "--use-fake-device-for-media-stream"],
        )
        try:
            app = await open_app(browser, stack, permissions=[])
            page = app.page
            await page.get_by_role("button", name="Hold to talk").click()
            await (
                page.get_by_role("alert").filter(has_text="Microphone access is blocked").wait_for()
            )
            turn = await send_text(page, "Typing works without a microphone.")
            await wait_state(turn, "done")
            app.assert_clean()
        finally:
            await browser.close()


async def test_the_modules_own_rules_in_the_browser(app: Watched) -> None:
    """The pure parts of the app's modules, run where they run: in the page."""
    page = app.page
    base = await page.evaluate(
        "document.querySelector('script[type=module]').src.replace(/js\\/main\\.js$/, '')"
    )
    result = await page.evaluate(
        """async (base) => {
        const search = await import(base + 'js/search.js');
        const speech = await import(base + 'js/speech.js');
        const format = await import(base + 'js/format.js');
        const recorder = await import(base + 'js/recorder.js');
        const text = 'One. Two? Three';
        return {
          parts: search.snippetParts('a &lt;b&gt; <mark>cat&amp;dog</mark> &quot;x&#x27; <i>'),
          unclosed: search.snippetParts('<mark>open'),
          sentences: [speech.completeSentences(text, 0), speech.completeSentences(text, 5),
                      speech.completeSentences('No end yet', 0)],
          timings: format.timingSummary({transcribe: 480, first_token: 1200, total: 2345}),
          // Safari offers only MP4, which the server does not take: no type, and
          // the page says so instead of recording what would be refused.
          types: [recorder.chooseType(t => t === 'audio/mp4'),
                  recorder.chooseType(t => t.startsWith('audio/ogg')),
                  recorder.chooseType(() => true)],
        };
      }""",
        base,
    )
    # Entities become characters, <mark> becomes a highlight, any other tag is text.
    assert result["parts"] == [
        {"text": "a <b> ", "mark": False},
        {"text": "cat&dog", "mark": True},
        {"text": " \"x' <i>", "mark": False},
    ]
    assert result["unclosed"] == [{"text": "open", "mark": True}]
    # Speech waits for a sentence's end: "Three" is spoken only when the reply is whole.
    assert result["sentences"] == [10, 10, 0]
    assert result["timings"]["line"] == "heard 480 ms · first words 1.2 s · total 2.3 s"
    assert result["types"] == [None, "audio/ogg;codecs=opus", "audio/webm;codecs=opus"]
    app.assert_clean()


def deploy(tmp_path: Path, name: str) -> Path:
    """A copy of the app with one stylesheet changed: a new deploy."""
    folder = tmp_path / name
    shutil.copytree(ROOT / "frontend", folder)
    with (folder / "css" / "app.css").open("a") as css:
        css.write(f"\n.{name} {{ color: inherit; }}\n")
    return folder


async def only_cache_is(page: Page, version: str) -> None:
    await page.wait_for_function(
        "v => caches.keys().then(k => k.length === 1 && k[0] === 'lva-shell-' + v)", arg=version
    )


async def test_a_new_deploy_is_offered_and_applied_without_a_stale_app(
    browser: Browser, stack: Stack, tmp_path: Path
) -> None:
    app = await open_app(browser, stack)
    page = app.page
    version = "meta[name=lva-version]"
    try:
        await page.evaluate("navigator.serviceWorker.ready")
        first = await page.get_attribute(version, "content")
        # A deploy while the page stays open: its periodic check finds the new worker.
        stack.stop_gateway()
        stack.start_gateway(FRONTEND_DIR=str(deploy(tmp_path, "second")))
        await page.evaluate("navigator.serviceWorker.getRegistration().then(r => r.update())")
        await page.get_by_role("alert").filter(has_text="A new version is ready").wait_for()
        # Until the learner says so, the page keeps running the version it has.
        assert await page.get_attribute(version, "content") == first
        async with page.expect_navigation():
            await page.get_by_role("button", name="Reload to update").click()
        await page.get_by_role("status").filter(has_text="Connected").wait_for()
        second = await page.get_attribute(version, "content")
        assert second and second != first
        await only_cache_is(page, second)
        css = await page.evaluate(
            "fetch(document.querySelector('link[rel=stylesheet]').href).then(r => r.text())"
        )
        assert ".second" in css

        # A deploy found by a reload: the page is new already; the worker follows quietly.
        stack.stop_gateway()
        stack.start_gateway(FRONTEND_DIR=str(deploy(tmp_path, "third")))
        await page.reload()
        third = await page.get_attribute(version, "content")
        assert third not in (first, second)
        await only_cache_is(page, str(third))
        assert await page.get_by_text("A new version is ready").count() == 0
        app.assert_clean(allow=OFFLINE_NOISE)
    finally:
        await app.context.close()
        stack.stop_gateway()
        stack.start_gateway()


# Lets a test see what the page hands to speech synthesis, and when; each call
# still goes through to the browser's own speak().
SPEECH_SPY = """
window.spoken = [];
const speak = speechSynthesis.speak.bind(speechSynthesis);
speechSynthesis.speak = (utterance) => {
  const turn = document.querySelectorAll('li.turn');
  window.spoken.push({text: utterance.text,
                      state: turn.length ? turn[turn.length - 1].dataset.state : null});
  speak(utterance);
};
"""


async def test_replies_are_spoken_sentence_by_sentence_and_the_toggle_is_remembered(
    browser: Browser, stack: Stack
) -> None:
    stack.llm.echo = False
    stack.llm.reply_text = (
        "Volcanoes form where magma rises through the crust. Some erupt when gas"
        " pressure builds up inside them. Which volcano are you thinking of?"
    )
    app = await open_app(browser, stack)
    page = app.page
    try:
        await page.add_init_script(SPEECH_SPY)
        await page.reload()
        await page.get_by_role("status").filter(has_text="Connected").wait_for()
        turn = await send_text(page, "How do volcanoes form?")
        await wait_state(turn, "done")
        spoken = await page.evaluate("window.spoken")
        assert [s["text"] for s in spoken] == [
            "Volcanoes form where magma rises through the crust.",
            "Some erupt when gas pressure builds up inside them.",
            "Which volcano are you thinking of?",
        ]
        # The first sentence was spoken while the rest was still being written.
        assert spoken[0]["state"] == "streaming"

        await page.get_by_role("checkbox", name="Speak replies").uncheck()
        await page.reload()
        await page.get_by_role("status").filter(has_text="Connected").wait_for()
        assert not await page.get_by_role("checkbox", name="Speak replies").is_checked()
        await wait_state(await send_text(page, "And under the sea?"), "done")
        assert await page.evaluate("window.spoken") == []
        app.assert_clean()
    finally:
        await app.context.close()


async def test_pressing_talk_while_a_reply_streams_barges_in(app: Watched, stack: Stack) -> None:
    stack.llm.piece_delay = 0.4
    page = app.page
    said = "Tell me slowly about how glaciers carve valleys over thousands of years."
    turn = await send_text(page, said)
    await wait_state(turn, "streaming")
    await page.locator("body").click(position={"x": 5, "y": 300})
    await page.keyboard.down("Space")
    await wait_state(turn, "cancelled", timeout=10_000)
    await page.keyboard.up("Space")
    assert len(await turn.locator(".reply").inner_text()) < len(f"You said: {said}")
    app.assert_clean()


async def test_ending_a_session_shows_its_summary_and_one_click_starts_another(
    app: Watched, stack: Stack
) -> None:
    stack.llm.piece_delay = 0
    page = app.page
    await wait_state(await send_text(page, "Photosynthesis turns light into sugar."), "done")
    first = await session_of(page)
    await page.get_by_role("button", name="End session").click()
    summary = page.get_by_role("status").filter(has_text="Session summary")
    await summary.wait_for()
    assert len(await summary.inner_text()) > len("Session summary")
    await page.get_by_role("button", name="New session").click()
    await page.get_by_role("status").filter(has_text="Connected").wait_for()
    assert await page.locator("li.turn").count() == 0
    assert await session_of(page) != first
    await wait_state(await send_text(page, "A fresh start."), "done")
    assert [h["user_text"] for h in await archived(stack, await session_of(page))] == [
        "A fresh start."
    ]
    app.assert_clean()


async def test_chromium_finds_the_app_installable(stack: Stack, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    from tests.browser.conftest import chromium_path

    path = chromium_path()
    assert path is not None
    async with async_playwright() as pw:
        # A profile on disk: Chromium installs nothing from an incognito context,
        # which is what Playwright's contexts otherwise are.
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=path,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run"],
        )
        try:
            page = await context.new_page()
            await page.goto(stack.url + "/")
            await page.evaluate("navigator.serviceWorker.ready")
            cdp = await context.new_cdp_session(page)
            manifest = await cdp.send("Page.getAppManifest")
            assert manifest["errors"] == [], manifest["errors"]
            # Chromium's own checks: manifest, icons, a worker that serves the page.
            errors: list[str] = ["not checked"]
            for _ in range(50):
                found = await cdp.send("Page.getInstallabilityErrors")
                errors = [e["errorId"] for e in found["installabilityErrors"]]
                if not errors:
                    break
                await asyncio.sleep(0.2)
            assert errors == []
        finally:
            await context.close()


async def test_a_long_outbox_is_delivered_a_few_at_a_time_each_once(
    browser: Browser, stack: Stack
) -> None:
    stack.llm.piece_delay = 0
    app = await open_app(browser, stack)
    page = app.page
    said = [f"Queued thought number {n} about the tides." for n in range(10)]
    try:
        session = await session_of(page)
        stack.stop_gateway()
        try:
            await page.get_by_role("status").filter(has_text="Connection lost").wait_for()
            for text in said:
                await send_text(page, text)
        finally:
            stack.start_gateway()
        # More than the gateway lets wait on one connection (8): none is refused.
        for n in range(len(said)):
            await wait_state(page.locator("li.turn").nth(n), "done")
        for _ in range(100):
            history = await archived(stack, session)
            if len(history) >= len(said):
                break
            await asyncio.sleep(0.2)
        assert sorted(h["user_text"] for h in history) == sorted(said)
        app.assert_clean(allow=OFFLINE_NOISE)
    finally:
        await app.context.close()


async def test_a_message_that_timed_out_is_tried_again_on_request(
    browser: Browser, stack: Stack
) -> None:
    stack.llm.piece_delay = 0
    stack.llm.delay = 4.0  # longer than the gateway below waits
    stack.stop_gateway()
    stack.start_gateway(REPLY_TIMEOUT="2")
    try:
        app = await open_app(browser, stack)
        page = app.page
        turn = await send_text(page, "Will this one make it?")
        await wait_state(turn, "error", timeout=20_000)
        stack.llm.delay = 0
        await turn.get_by_role("button", name="Try again").click()
        await wait_state(turn, "done")
        assert "Will this one make it?" in await turn.locator(".reply").inner_text()
        app.assert_clean()
        await app.context.close()
    finally:
        stack.stop_gateway()
        stack.start_gateway()
