"""The responder's decisions on a real Redis: an utterance is answered once, whatever
its deliveries, and one whose asker gave up is archived without asking the model."""

from collections.abc import AsyncGenerator, Sequence
from datetime import timedelta
from itertools import count

import pytest
from redis.asyncio import Redis

from services.responder.context import ContextStore
from services.responder.providers.base import ChatMessage, LLMUnavailableError
from services.responder.service import Responder
from services.responder.settings import ResponderSettings
from shared.events import UtteranceReceived, utcnow


class CountingModel:
    """Answers differently every time, so a second call would show in the text."""

    name = "counting"
    model = "counting"

    def __init__(self) -> None:
        self.calls = 0
        self._numbers = count(1)
        self.fail = False

    async def start(self) -> None:
        return None

    async def stream(
        self, system: str, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> AsyncGenerator[str, None]:
        self.calls += 1
        if self.fail:
            raise LLMUnavailableError("scripted outage")
        yield f"Answer number {next(self._numbers)}."
        yield " What do you think?"

    async def aclose(self) -> None:
        return None


@pytest.fixture
def model() -> CountingModel:
    return CountingModel()


@pytest.fixture
def responder(redis: Redis, model: CountingModel) -> Responder:
    store = ContextStore(redis, max_exchanges=5, ttl_s=1800)
    return Responder(store, model, ResponderSettings(_env_file=None))


def utterance(text: str = "I read about tides today", **fields: object) -> UtteranceReceived:
    return UtteranceReceived(session_id="s1", source="websocket", text=text, **fields)


async def test_a_redelivered_utterance_gets_the_same_answer_without_the_model(
    responder: Responder, model: CountingModel
) -> None:
    event = utterance()
    first, first_exchange = await responder.answer(event)
    again, again_exchange = await responder.answer(event)
    assert model.calls == 1
    assert first is not None and again is not None
    assert again.agent_text == first.agent_text == "Answer number 1. What do you think?"
    assert again.timestamp == first.timestamp
    assert again_exchange == first_exchange


async def test_an_apology_is_also_answered_once(
    responder: Responder, model: CountingModel, redis: Redis
) -> None:
    model.fail = True
    event = utterance()
    first, _ = await responder.answer(event)
    model.fail = False
    again, exchange = await responder.answer(event)
    assert model.calls == 1
    assert first is not None and again is not None
    assert again.agent_text == first.agent_text
    assert exchange.agent_text == first.agent_text
    # The apology stays out of the model's context all the same.
    store = ContextStore(redis, max_exchanges=5, ttl_s=1800)
    assert await store.load("s1") == []


async def test_an_utterance_past_its_deadline_is_archived_unanswered(
    responder: Responder, model: CountingModel, redis: Redis
) -> None:
    event = utterance(deadline=utcnow() - timedelta(seconds=1))
    reply, exchange = await responder.answer(event)
    assert reply is None
    assert model.calls == 0
    assert exchange.expired and exchange.agent_text == ""
    assert exchange.user_text == event.text
    store = ContextStore(redis, max_exchanges=5, ttl_s=1800)
    assert await store.load("s1") == []


async def test_an_utterance_within_its_deadline_is_answered(
    responder: Responder, model: CountingModel
) -> None:
    reply, exchange = await responder.answer(utterance(deadline=utcnow() + timedelta(seconds=30)))
    assert reply is not None and not exchange.expired
    assert model.calls == 1
