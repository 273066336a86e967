"""The messages that travel between services, one pydantic model each.

Events carry `event_id`, `session_id`, `source`, `reply_to` and `occurred_at`
(design: Contracts). Unknown fields are ignored so that a newer producer can add a
field without breaking an older consumer during a rolling deploy.
"""

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

SESSION_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

SessionId = Annotated[str, StringConstraints(pattern=SESSION_ID_PATTERN)]
# Who owns captures, contexts and sessions: the `sub` of a token, an API key's
# learner, or a phone caller's. Same shape as a session id, plus ":" and ".".
LEARNER_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
LearnerId = Annotated[str, StringConstraints(pattern=LEARNER_PATTERN)]
# The one learner of AUTH_MODE=open, and the owner of captures made before v2 knew
# learners (the archive's migration gives them to it).
DEFAULT_LEARNER = "local"
Source = Literal["websocket", "api", "twilio"]
Intent = Literal["question", "reflection", "statement", "end_conversation"]


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Expiring(Message):
    # When the asker stops waiting (the gateway sets its REPLY_TIMEOUT after
    # `occurred_at`); None: no one waits, the work is never stale. Workers skip
    # what nobody will read, so a backlog after an outage drains at once.
    deadline: datetime | None = None

    def past_deadline(self, now: datetime | None = None) -> bool:
        return self.deadline is not None and (now or utcnow()) >= self.deadline


class Event(Expiring):
    event_id: str = Field(default_factory=new_id)
    session_id: SessionId
    source: Source
    # Reply stream of the instance holding the learner's connection; None for
    # events nobody waits on.
    reply_to: str | None = None
    occurred_at: datetime = Field(default_factory=utcnow)
    # Whose it is: an older producer sends none, and its events are the default's.
    learner: LearnerId = DEFAULT_LEARNER


class Timings(Message):
    """Where a reply's time went, in milliseconds (None: that step did not happen).

    Durations across hosts compare their clocks (keep them in sync).
    """

    # Waiting in streams: from the gateway's publish until work on it began (for a
    # clip, the wait for the transcriber plus the wait for the responder).
    queued: float | None = None
    # The transcriber's work on a clip: decoding and recognition.
    transcribe: float | None = None
    # From the language-model call to its first piece of text.
    first_token: float | None = None
    # The whole language-model call, until its last piece (or its cancel).
    generate: float | None = None
    # From the gateway's receipt of the message until it sent the reply.
    total: float | None = None


class UtteranceReceived(Event):
    """Something the learner said, as text: typed, or transcribed from audio."""

    text: Annotated[str, StringConstraints(min_length=1)]
    input: Literal["text", "audio"] = "text"
    # The asker shows the reply as it is written: send it in pieces (`DeltaReply`).
    stream: bool = False
    # Timings so far (a clip's wait and transcription) and when this event was
    # published, so the responder can add its own wait.
    timings: Timings = Field(default_factory=Timings)
    published_at: datetime | None = None
    # Who called, for a phone call: a keyed hash of the number (HMAC-SHA256 with
    # PHONE_HASH_SECRET, 16 hex digits), never the number. The same caller has the
    # same value across calls; the number cannot be recovered from it.
    caller: str | None = None


class AudioReceived(Event):
    """A clip whose bytes wait in Redis under `audio_key` (claim check)."""

    audio_key: str
    size_bytes: int = Field(ge=0)
    # The asker wants the transcript (`TranscriptReply`) and the reply in pieces.
    stream: bool = False


class SessionEndRequested(Event):
    """The learner ended the conversation; the responder answers with a summary."""


class ExchangeCompleted(Event):
    """One learner utterance and the companion's answer, to be archived.

    `event_id` is the id of the utterance it answers, so a redelivered utterance
    produces the same exchange and the archive stores it once.
    """

    user_text: str
    agent_text: str
    intent: Intent
    input: Literal["text", "audio"] = "text"
    # Instance id of the responder replica that answered (for operators).
    responder: str = ""
    # The asker had given up before the model was asked: `agent_text` is empty,
    # and the learner's words are kept all the same.
    expired: bool = False
    # The learner cut the reply short: `agent_text` is what they received.
    cancelled: bool = False
    # The utterance's `caller` (a keyed hash of a phone number), if it had one.
    caller: str | None = None


# What telephony learns about a call after its exchanges were written, for the
# archive (stream `call.events`). Each is idempotent: stored once however often
# it is delivered, and in whichever order it meets the exchange it concerns.


class ReplyInterrupted(Event):
    """The caller talked over a reply: they heard only `heard_text` of it.

    `in_reply_to` is the utterance's event id (the exchange's `event_id`). The
    archive keeps what the caller heard as the exchange's `agent_text`.
    """

    kind: Literal["interrupted"] = "interrupted"
    in_reply_to: str
    heard_text: str
    # Twilio's durationUntilInterruptMs: how long the reply had been spoken.
    heard_ms: int | None = Field(default=None, ge=0)


class CallRecorded(Event):
    """Twilio finished a recording of the call (its recording status callback)."""

    kind: Literal["recorded"] = "recorded"
    recording_sid: str = Field(min_length=1, max_length=64)
    recording_url: str = Field(min_length=1, max_length=2048)
    # Seconds; None when Twilio sent none.
    duration_s: int | None = Field(default=None, ge=0)


AnyCallEvent = Annotated[ReplyInterrupted | CallRecorded, Field(discriminator="kind")]


# Replies: sent by a worker to the `reply_to` stream of the asking instance.


class Reply(Message):
    in_reply_to: str
    session_id: str | None = None


class ConversationReply(Reply):
    kind: Literal["conversation"] = "conversation"
    user_text: str
    agent_text: str
    intent: Intent
    timestamp: datetime
    # Cut short by a cancel: `agent_text` is what had been sent.
    cancelled: bool = False
    timings: Timings = Field(default_factory=Timings)
    # For a streaming asker: the reply's last piece, sent with the reply rather
    # than on its own (one write fewer); the asker's instance passes it on as a
    # piece before the reply.
    last_piece: str | None = None


class TranscriptReply(Reply):
    """What the transcriber heard, sent before the companion starts to answer."""

    kind: Literal["transcript"] = "transcript"
    text: str


class DeltaReply(Reply):
    """The next piece of a reply being written; the pieces join to its `agent_text`."""

    kind: Literal["delta"] = "delta"
    text: str
    # Set by the asking instance on the piece that came with the whole reply: the
    # reply follows at once, so a telephone voice can be told this piece ends it.
    last: bool = False


class SummaryReply(Reply):
    kind: Literal["summary"] = "summary"
    text: str


ErrorCode = Literal[
    "invalid_audio",
    "audio_too_large",
    "audio_too_long",
    "no_speech",
    "transcription_failed",
    "internal",
    # The message failed MAX_DELIVERIES times and waits in dead.letters.
    "dead_letter",
]


class ErrorReply(Reply):
    kind: Literal["error"] = "error"
    code: ErrorCode
    message: str


class SearchHit(Message):
    id: int
    session_id: str
    timestamp: str
    user_text: str
    agent_text: str
    user_snippet: str
    agent_snippet: str


class SearchReply(Reply):
    kind: Literal["search"] = "search"
    query: str
    results: list[SearchHit]


class HistoryItem(Message):
    id: int
    timestamp: str
    user_text: str
    agent_text: str
    metadata: str | None


class HistoryReply(Reply):
    kind: Literal["history"] = "history"
    history: list[HistoryItem]


class StatsReply(Reply):
    kind: Literal["stats"] = "stats"
    total_captures: int
    unique_sessions: int
    last_capture: str | None


AnyReply = Annotated[
    ConversationReply
    | TranscriptReply
    | DeltaReply
    | SummaryReply
    | ErrorReply
    | SearchReply
    | HistoryReply
    | StatsReply,
    Field(discriminator="kind"),
]
# Replies that come before the one that ends a request.
PARTIAL_REPLIES = (TranscriptReply, DeltaReply)


# Requests to the archiver, the only reader of the database (request-reply).


class ArchiveQuery(Expiring):
    query_id: str = Field(default_factory=new_id)
    reply_to: str
    occurred_at: datetime = Field(default_factory=utcnow)
    # Whose captures are searched, listed or counted; None: everyone's (an admin's
    # stats).
    learner: LearnerId | None = DEFAULT_LEARNER


class SearchQuery(ArchiveQuery):
    kind: Literal["search"] = "search"
    query: str
    limit: int = Field(ge=1)


class HistoryQuery(ArchiveQuery):
    kind: Literal["history"] = "history"
    session_id: SessionId
    limit: int = Field(ge=1)


class StatsQuery(ArchiveQuery):
    kind: Literal["stats"] = "stats"


AnyArchiveQuery = Annotated[
    SearchQuery | HistoryQuery | StatsQuery,
    Field(discriminator="kind"),
]
