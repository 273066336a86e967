"""The responder's decisions, free of any broker: an utterance in, a reply and an
exchange out. The FastStream handlers in `app` only deliver what this returns.

A reply streams while the model writes it: settled text (see `shaping`) is cut
into pieces (see `pieces`) and handed to a `PieceSink` as it comes, for an asker
that shows the reply as it is written. A cancel stops the model at once; the reply,
the context and the archive then hold what the learner received, no more.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime

from services.responder import tracing
from services.responder.context import ContextExchange, ContextStore
from services.responder.intent import detect_intent
from services.responder.pieces import PieceCutter
from services.responder.prompts import (
    RATE_LIMITED_REPLY,
    SYSTEM_PROMPT,
    UNAVAILABLE_REPLY,
    UNEXPECTED_REPLY,
    build_messages,
    stable_window,
)
from services.responder.providers.base import (
    ChatMessage,
    LLMProvider,
    LLMRateLimitedError,
    LLMUnavailableError,
)
from services.responder.settings import ResponderSettings
from services.responder.shaping import ReplyShaper
from services.responder.summary import summarize
from shared import telemetry
from shared.cancel import CancelWatch
from shared.events import (
    ConversationReply,
    ExchangeCompleted,
    Intent,
    SessionEndRequested,
    SummaryReply,
    Timings,
    UtteranceReceived,
    utcnow,
)

log = logging.getLogger(__name__)

# Sends one piece of the reply to its asker; False if the asker cancelled it.
PieceSink = Callable[[str], Awaitable[bool]]


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 2)


def _ms_between(start: datetime, end: datetime) -> float:
    return round(max(0.0, (end - start).total_seconds() * 1000), 2)


@dataclass
class Generation:
    """One reply being written, as far as it got."""

    shaper: ReplyShaper
    sink: PieceSink | None
    cutter: PieceCutter = field(default_factory=PieceCutter)
    # What the asker received, piece by piece.
    delivered: str = ""
    # The model wrote something other than white space.
    wrote: bool = False
    cancelled: bool = False
    # What went wrong, if the model failed: the apology to send instead.
    apology: str | None = None
    first_token_ms: float | None = None
    generate_ms: float | None = None
    # A piece is on its way: a cancel must let it arrive (or be refused) first,
    # or nobody would know whether the learner got it.
    sending: bool = False

    async def send(self, text: str | None) -> None:
        """Hand `text` to the asker (if it streams); notice a cancel."""
        if not text or self.sink is None or self.cancelled:
            return
        self.sending = True
        try:
            delivered = await self.sink(text)
        finally:
            self.sending = False
        if delivered:
            self.delivered += text
        else:
            self.cancelled = True

    async def settle(self, text: str) -> None:
        if text and self.sink is not None:
            await self.send(self.cutter.add(text))


def _left(event: UtteranceReceived) -> float | None:
    """Seconds until the asker stops waiting (None: nobody waits, no limit)."""
    if event.deadline is None:
        return None
    return max(0.0, (event.deadline - utcnow()).total_seconds())


class Responder:
    def __init__(
        self,
        store: ContextStore,
        llm: LLMProvider,
        settings: ResponderSettings,
        cancels: CancelWatch | None = None,
    ) -> None:
        self._store = store
        self._llm = llm
        self._settings = settings
        self._cancels = cancels

    async def _write(
        self, event: UtteranceReceived, context: list[ContextExchange], gen: Generation
    ) -> None:
        """Run the model, handing settled text on as it comes (cancellable)."""
        messages = build_messages(context, event.text)
        with tracing.chat(
            self._llm,
            event.session_id,
            messages,
            max_tokens=self._settings.claude_max_tokens,
            temperature=self._settings.claude_temperature,
        ) as call:
            await self._run_model(event, messages, gen, call)

    async def _run_model(
        self,
        event: UtteranceReceived,
        messages: list[ChatMessage],
        gen: Generation,
        call: tracing.ChatCall,
    ) -> None:
        started = time.perf_counter()
        written = call.written
        try:
            # Nobody reads a reply past its asker's deadline: the call ends there,
            # whatever the SDK's timeouts and retries would still allow.
            async with (
                asyncio.timeout(_left(event)),
                aclosing(
                    self._llm.stream(
                        SYSTEM_PROMPT,
                        messages,
                        max_tokens=self._settings.claude_max_tokens,
                        temperature=self._settings.claude_temperature,
                    )
                ) as tokens,
            ):
                async for token in tokens:
                    if gen.first_token_ms is None:
                        gen.first_token_ms = _ms(started)
                        call.first_token(gen.first_token_ms)
                    if written is not None:
                        written.append(token)
                    gen.wrote = gen.wrote or bool(token.strip())
                    if gen.sink is None:
                        # Nobody reads it before the end: only watch for enough.
                        gen.shaper.take(token)
                    else:
                        await gen.settle(gen.shaper.feed(token))
                    # Every token costs time the learner waits for: stop at enough.
                    if gen.cancelled or gen.shaper.done:
                        break
        except LLMRateLimitedError as exc:
            log.warning("model %s is rate limited; session %s", self._llm.name, event.session_id)
            gen.apology = RATE_LIMITED_REPLY
            call.failed(type(exc).__name__)
        except LLMUnavailableError as exc:
            log.error("model %s unavailable: %s", self._llm.name, exc)
            gen.apology = UNAVAILABLE_REPLY
            call.failed(type(exc).__name__)
        except TimeoutError:
            log.warning(
                "model %s still writing at the deadline of utterance %s: stopped",
                self._llm.name,
                event.event_id,
            )
            gen.apology = UNAVAILABLE_REPLY
            call.failed("deadline")
        except Exception as exc:
            log.exception("model %s failed unexpectedly", self._llm.name)
            gen.apology = UNEXPECTED_REPLY
            call.failed(type(exc).__name__)
        finally:
            gen.generate_ms = _ms(started)
            # Also when a cancel stops the writer mid-token (CancelledError).
            call.ended(cancelled=gen.cancelled, stopped_early=gen.shaper.done)
        if not gen.wrote and gen.apology is None:
            log.error("model %s returned no text", self._llm.name)
            gen.apology = UNAVAILABLE_REPLY
            call.failed("empty_reply")

    async def _generate(
        self, event: UtteranceReceived, context: list[ContextExchange], sink: PieceSink | None
    ) -> Generation:
        gen = Generation(ReplyShaper(event.text), sink)
        if self._cancels is None:
            await self._write(event, context, gen)
            return gen
        with self._cancels.watching(event.event_id) as cancelled:
            writing = asyncio.create_task(self._write(event, context, gen))

            def stop(_: "asyncio.Future[None]") -> None:
                gen.cancelled = True
                # Stop the model now, even mid-token: what was sent stands. A piece
                # on its way is let through (the cancel key decides whether it is
                # sent), and the writer stops right after it.
                if not gen.sending:
                    writing.cancel()

            cancelled.add_done_callback(stop)
            try:
                await writing
            except asyncio.CancelledError:
                # The writer was stopped by the cancel, or this handler itself is
                # being cancelled (shutdown): only the second goes on up.
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
            finally:
                cancelled.remove_done_callback(stop)
                if not writing.done():
                    writing.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await writing
        return gen

    async def _finish(self, gen: Generation) -> tuple[str, bool, str | None]:
        """The reply's text, whether it came from the model (an apology stays out
        of the model's context), and for a streaming asker the last piece, which
        goes out with the reply."""
        streaming = gen.sink is not None
        if gen.cancelled:
            return (gen.delivered if streaming else ""), True, None
        if gen.apology is not None and not gen.shaper.sent:
            return gen.apology, False, (gen.apology if streaming else None)
        if gen.apology is not None:
            log.warning("the model failed mid-reply: the reply ends with what it wrote")
        tail = gen.shaper.finish()
        if not streaming:
            return gen.shaper.sent, True, None
        last = gen.cutter.rest(tail)
        return gen.delivered + (last or ""), True, last

    async def answer(
        self, event: UtteranceReceived, sink: PieceSink | None = None
    ) -> tuple[ConversationReply | None, ExchangeCompleted]:
        """The reply to send (None: nobody waits for one) and the exchange to archive.

        With `sink`, the reply goes to the asker piece by piece as it is written;
        the reply returned then holds exactly the pieces sent. A redelivered
        utterance gets the answer it already got; one whose asker has given up is
        archived unanswered, without asking the model.
        """
        started = utcnow()
        timings = event.timings.model_copy(
            update={
                "queued": round(
                    (event.timings.queued or 0.0)
                    + _ms_between(event.published_at or event.occurred_at, started),
                    2,
                )
            }
        )
        intent = detect_intent(event.text)
        recalled = await self._store.recall(event.session_id, event.event_id)
        earlier = recalled.earlier
        if earlier is not None:
            log.info("utterance %s was answered before: sending that answer again", event.event_id)
            reply = self._reply(event, intent, earlier.agent_text, earlier.at, timings)
            reply = reply.model_copy(update={"cancelled": earlier.cancelled})
            exchange = self._exchange(event, intent, earlier.agent_text)
            return reply, exchange.model_copy(update={"cancelled": earlier.cancelled})
        if event.past_deadline():
            log.info(
                "utterance %s on session %s expired before it was answered: archived unanswered",
                event.event_id,
                event.session_id,
            )
            return None, self._exchange(event, intent, "", expired=True)
        last_piece = None
        if recalled.cancelled:
            # Cancelled before it began: the learner's words are kept, unanswered.
            agent_text, from_model, cancelled = "", True, True
        else:
            window = stable_window(
                recalled.context, recalled.exchanges, self._settings.context_stable_block
            )
            gen = await self._generate(event, window, sink)
            agent_text, from_model, last_piece = await self._finish(gen)
            cancelled = gen.cancelled
            timings = timings.model_copy(
                update={"first_token": gen.first_token_ms, "generate": gen.generate_ms}
            )
        now = utcnow()
        recorded = await self._store.record(
            session_id=event.session_id,
            event_id=event.event_id,
            source=event.source,
            user=event.text,
            agent=agent_text,
            at=now,
            # An apology would only confuse the model next turn, and an empty turn
            # is not one; the archive keeps everything the learner said.
            in_context=from_model and bool(agent_text),
            cancelled=cancelled,
        )
        if not recorded:
            # Another delivery of the same utterance answered first: say what it said.
            earlier = await self._store.answered(event.event_id)
            if earlier is not None:
                agent_text, now, cancelled = earlier.agent_text, earlier.at, earlier.cancelled
        reply = self._reply(event, intent, agent_text, now, timings, cancelled=cancelled)
        if last_piece is not None and agent_text.endswith(last_piece):
            reply = reply.model_copy(update={"last_piece": last_piece})
        exchange = self._exchange(event, intent, agent_text, cancelled=cancelled)
        return reply, exchange

    def _reply(
        self,
        event: UtteranceReceived,
        intent: Intent,
        agent_text: str,
        at: datetime,
        timings: Timings,
        *,
        cancelled: bool = False,
    ) -> ConversationReply:
        return ConversationReply(
            in_reply_to=event.event_id,
            session_id=event.session_id,
            user_text=event.text,
            agent_text=agent_text,
            intent=intent,
            timestamp=at,
            cancelled=cancelled,
            timings=timings,
        )

    def _exchange(
        self,
        event: UtteranceReceived,
        intent: Intent,
        agent_text: str,
        *,
        expired: bool = False,
        cancelled: bool = False,
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
            cancelled=cancelled,
            caller=event.caller,
            learner=event.learner,
        )

    async def end(self, event: SessionEndRequested) -> SummaryReply:
        with tracing.span("session.summary", event.session_id) as span:
            context = await self._store.end(event.session_id)
            text = summarize(context)
            if span.is_recording():
                span.set_attribute("lva.context.exchanges", len(context))
            # The topics are the learner's own words.
            telemetry.content(span, "lva.summary", text)
        return SummaryReply(in_reply_to=event.event_id, session_id=event.session_id, text=text)
