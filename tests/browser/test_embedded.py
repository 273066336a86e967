"""What a new user meets after `make run`: the PWA against the embedded models
(faster-whisper tiny.en and SmolLM2), no wire-format server anywhere."""

from collections.abc import AsyncIterator, Iterator

import pytest
from playwright.async_api import Browser

from tests.browser.conftest import SPOKEN, Stack, Watched, open_app
from tests.browser.test_pwa import (
    last_turn,
    press_talk,
    snapshots_until_done,
    until_searchable,
)
from tests.support.redis_server import local_redis
from tests.support.services import running
from tests.support.wer import word_error_rate, words

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("embedded")
    with local_redis() as redis:
        env = {
            "REDIS_URL": redis.url,
            "LLM_PROVIDER": "local",
            "STT_PROVIDER": "local",
            "DATABASE_URL": f"sqlite:///{tmp / 'archive.db'}",
            "REPLY_TIMEOUT": "90",
        }
        with running(["archiver", "responder", "transcriber", "gateway"], env, tmp) as services:
            yield Stack(services, None, tmp, env)  # type: ignore[arg-type]


@pytest.fixture
async def page_on_embedded(browser: Browser, embedded: Stack) -> AsyncIterator[Watched]:
    watched = await open_app(browser, embedded)
    try:
        yield watched
    finally:
        await watched.context.close()


async def test_hold_speak_read_the_reply_as_it_streams_and_find_it_again(
    page_on_embedded: Watched, embedded: Stack
) -> None:
    app = page_on_embedded
    page = app.page
    await press_talk(page)
    await page.wait_for_timeout(7500)
    await page.mouse.up()

    seen = await snapshots_until_done(last_turn(page), timeout=120)
    heard, reply, state = seen[-1]
    assert state == "done", seen
    assert word_error_rate(SPOKEN, heard) <= 0.5, heard
    assert reply.strip()
    # The embedded model's words arrived before its reply was whole.
    assert any(s[1] and s[1] != reply and reply.startswith(s[1]) for s in seen), seen

    # Found again by a word of what was heard (Whisper's spelling, whatever it was).
    word = max(words(heard), key=len)
    await until_searchable(embedded, word)
    await page.keyboard.press("Control+K")
    search = page.get_by_role("searchbox", name="Search your thoughts")
    await search.press_sequentially(word, delay=30)
    mark = page.get_by_role("list", name="Search results").locator("mark").first
    await mark.wait_for()
    assert (await mark.inner_text()).lower() == word
    app.assert_clean()
