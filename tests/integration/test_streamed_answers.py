"""The responder's whole path streams exactly the reply it returns: however the model
splits a reply and however fast it writes, the pieces sent to the asker and the last
piece (which rides with the reply) join to the reply's `agent_text`, and that is the
reply an asker that waits for the whole of it gets, and what the context keeps.

The responder, the shaping, the piece cutting and the context store (on a real Redis)
are the real ones; only the model is scripted: it writes a given reply in given
pieces, at a given pace.
"""

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from services.responder import pieces
from services.responder.context import ContextStore
from services.responder.prompts import UNAVAILABLE_REPLY
from services.responder.providers.base import ChatMessage
from services.responder.service import Responder
from services.responder.settings import ResponderSettings
from services.responder.shaping import MAX_SENTENCES, sentences, shape_reply
from shared.events import UtteranceReceived, new_id
from tests.unit.test_stream_shaping import DETAILED, REAL_REPLIES, VAGUE, split

# Replies that a vague message gets a question appended to (none asks one), and
# that are cut to three sentences: both change the reply's end while it streams.
FALLBACK_AND_TRIM = [
    "Cells are the smallest living things. They divide to make more cells.",
    "Tides follow the moon, which pulls on the oceans. The sun pulls too, a little less. "
    "Together they make spring tides. Twice a month the pull is strongest. Then it eases.",
    "Volcanoes form where magma rises through the crust, and they erupt when the pressure "
    "builds. Some are quiet for centuries! Others erupt every year. Why do you ask about them?",
]
# The time before each token: at once, within the cutter's interval, or after it.
PAUSES = st.sampled_from([0.0, pieces.MIN_INTERVAL_S / 2, pieces.MIN_INTERVAL_S * 1.5])


@dataclass
class Clock:
    """The clock the piece cutter reads, moved on by the model as it writes."""

    now: float = 1000.0

    def monotonic(self) -> float:
        return self.now


@dataclass
class SplitModel:
    """Writes a reply in `parts`, waiting (on `clock`) before each the next of `pauses`
    (round and round)."""

    parts: list[str]
    pauses: list[float]
    clock: Clock
    name: str = "split"
    model: str = "split"
    # What the model wrote before the responder stopped reading.
    written: str = field(default="", init=False)

    async def start(self) -> None:
        return None

    async def stream(
        self, system: str, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> AsyncGenerator[str, None]:
        self.written = ""
        for n, part in enumerate(self.parts):
            self.clock.now += self.pauses[n % len(self.pauses)] if self.pauses else 0.0
            self.written += part
            yield part

    async def aclose(self) -> None:
        return None


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    # The cutter times pieces itself; a scripted clock draws the model's pace with
    # the split, without sleeping through every example.
    clock = Clock()
    monkeypatch.setattr(pieces, "time", SimpleNamespace(monotonic=clock.monotonic))
    return clock


def test_the_replies_include_a_fallback_question_and_a_trim() -> None:
    shaped = [shape_reply(VAGUE, reply) for reply in FALLBACK_AND_TRIM]
    assert not any("?" in reply for reply in FALLBACK_AND_TRIM[:2])
    assert all(shaped[n].endswith("?") for n in range(2))
    assert all(len(sentences(reply)) > MAX_SENTENCES for reply in FALLBACK_AND_TRIM[1:])


@given(
    reply=st.sampled_from([*REAL_REPLIES, *FALLBACK_AND_TRIM]),
    user=st.sampled_from([VAGUE, DETAILED]),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=40),
    pauses=st.lists(PAUSES, max_size=40),
)
@settings(
    max_examples=150,
    deadline=None,
    # One Redis for every example: each uses sessions of its own.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
async def test_streamed_pieces_join_to_the_reply_an_unstreamed_asker_gets(
    redis: Redis, clock: Clock, reply: str, user: str, cuts: list[int], pauses: list[float]
) -> None:
    model = SplitModel(split(reply, cuts), pauses, clock)
    store = ContextStore(redis, max_exchanges=5, ttl_s=60)
    responder = Responder(store, model, ResponderSettings(_env_file=None))

    sent: list[str] = []

    async def sink(piece: str) -> bool:
        sent.append(piece)
        return True

    asked = UtteranceReceived(session_id=new_id(), source="websocket", text=user, stream=True)
    streamed, exchange = await responder.answer(asked, sink)
    written = model.written
    waited = UtteranceReceived(session_id=new_id(), source="websocket", text=user)
    whole, _ = await responder.answer(waited)

    assert streamed is not None and whole is not None
    assert all(sent), sent
    received = "".join(sent) + (streamed.last_piece or "")
    assert received == streamed.agent_text == exchange.agent_text
    assert streamed.agent_text == whole.agent_text
    # The reply shaped as a whole from what the model had written when it was
    # stopped (at enough sentences); a model that wrote only white space failed.
    shaped = shape_reply(user, written) if written.strip() else UNAVAILABLE_REPLY
    assert streamed.agent_text == shaped
    assert not streamed.cancelled
    # The context keeps the reply the learner got (an apology stays out of it).
    kept = [(x.user, x.agent) for x in await store.load(asked.session_id)]
    assert kept == ([] if shaped == UNAVAILABLE_REPLY else [(user, shaped)])
