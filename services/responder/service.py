"""The responder's decisions, free of any broker: an utterance in, a reply and an
exchange out. The FastStream handlers in `main` only deliver what this returns."""

import logging
from datetime import datetime

from services.responder.context import ContextExchange, ContextStore
from services.responder.intent import detect_intent
from services.responder.prompts import (
    RATE_LIMITED_REPLY,
    SYSTEM_PROMPT,
    UNAVAILABLE_REPLY,
    UNEXPECTED_REPLY,
    build_messages,
)
from services.responder.providers.base import (
    LLMProvider,
    LLMRateLimitedError,
    LLMUnavailableError,
    complete,
)
from services.responder.settings import ResponderSettings
from services.responder.shaping import enough_sentences, shape_reply
from services.responder.summary import summarize
from shared.events import (
    ConversationReply,
    ExchangeCompleted,
    Intent,
    SessionEndRequested,
    SummaryReply,
    UtteranceReceived,
    utcnow,
)

log = logging.getLogger(__name__)


class Responder:
    def __init__(self, store: ContextStore, llm: LLMProvider, settings: ResponderSettings) -> None:
        self._store = store
        self._llm = llm
        self._settings = settings

    async def _generate(
        self, event: UtteranceReceived, context: list[ContextExchange]
    ) -> tuple[str, bool]:
        """The companion's words, and whether they came from the model."""
        try:
            raw = await complete(
                self._llm,
                SYSTEM_PROMPT,
                build_messages(context, event.text),
                max_tokens=self._settings.claude_max_tokens,
                temperature=self._settings.claude_temperature,
                enough=enough_sentences,
            )
        except LLMRateLimitedError:
            log.warning("model %s is rate limited; session %s", self._llm.name, event.session_id)
            return RATE_LIMITED_REPLY, False
        except LLMUnavailableError as exc:
            log.error("model %s unavailable: %s", self._llm.name, exc)
            return UNAVAILABLE_REPLY, False
        except Exception:
            log.exception("model %s failed unexpectedly", self._llm.name)
            return UNEXPECTED_REPLY, False
        return shape_reply(event.text, raw), True

    async def answer(
        self, event: UtteranceReceived
    ) -> tuple[ConversationReply | None, ExchangeCompleted]:
        """The reply to send (None: nobody waits for one) and the exchange to archive.

        A redelivered utterance gets the answer it already got; one whose asker has
        given up is archived unanswered, without asking the model.
        """
        intent = detect_intent(event.text)
        earlier, context = await self._store.recall(event.session_id, event.event_id)
        if earlier is not None:
            log.info("utterance %s was answered before: sending that answer again", event.event_id)
            return self._reply(event, intent, earlier.agent_text, earlier.at), self._exchange(
                event, intent, earlier.agent_text
            )
        if event.past_deadline():
            log.info(
                "utterance %s on session %s expired before it was answered: archived unanswered",
                event.event_id,
                event.session_id,
            )
            return None, self._exchange(event, intent, "", expired=True)
        agent_text, from_model = await self._generate(event, context)
        now = utcnow()
        # An apology would only confuse the model next turn: context keeps real
        # exchanges. The archive keeps everything the learner said.
        recorded = await self._store.record(
            session_id=event.session_id,
            event_id=event.event_id,
            source=event.source,
            user=event.text,
            agent=agent_text,
            at=now,
            in_context=from_model,
        )
        if not recorded:
            # Another delivery of the same utterance answered first: say what it said.
            earlier = await self._store.answered(event.event_id)
            if earlier is not None:
                agent_text, now = earlier.agent_text, earlier.at
        return self._reply(event, intent, agent_text, now), self._exchange(
            event, intent, agent_text
        )

    def _reply(
        self, event: UtteranceReceived, intent: Intent, agent_text: str, at: datetime
    ) -> ConversationReply:
        return ConversationReply(
            in_reply_to=event.event_id,
            session_id=event.session_id,
            user_text=event.text,
            agent_text=agent_text,
            intent=intent,
            timestamp=at,
        )

    def _exchange(
        self, event: UtteranceReceived, intent: Intent, agent_text: str, *, expired: bool = False
    ) -> ExchangeCompleted:
        return ExchangeCompleted(
            event_id=event.event_id,
            session_id=event.session_id,
            source=event.source,
            occurred_at=event.occurred_at,
            user_text=event.text,
            agent_text=agent_text,
            intent=intent,
            input=event.input,
            responder=self._settings.instance_id,
            expired=expired,
        )

    async def end(self, event: SessionEndRequested) -> SummaryReply:
        context = await self._store.end(event.session_id)
        return SummaryReply(
            in_reply_to=event.event_id, session_id=event.session_id, text=summarize(context)
        )
