"""Every message model survives the trip through JSON that the broker makes."""

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from shared.events import (
    AnyArchiveQuery,
    AnyReply,
    AudioReceived,
    ConversationReply,
    ErrorReply,
    ExchangeCompleted,
    HistoryItem,
    HistoryQuery,
    HistoryReply,
    SearchHit,
    SearchQuery,
    SearchReply,
    SessionEndRequested,
    StatsQuery,
    StatsReply,
    SummaryReply,
    UtteranceReceived,
)

NOW = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)
HIT = SearchHit(
    id=1, session_id="s1", timestamp="2026-11-25T10:30:00", user_text="u", agent_text="a",
    user_snippet="<mark>u</mark>", agent_snippet="a",
)  # fmt: skip

SAMPLES: list[BaseModel] = [
    UtteranceReceived(session_id="s1", source="websocket", text="hello", reply_to="r"),
    UtteranceReceived(session_id="twilio_CA123", source="twilio", text="hi", input="audio"),
    UtteranceReceived(session_id="s1", source="api", text="hi", deadline=NOW),
    AudioReceived(session_id="s1", source="api", audio_key="audio:1", size_bytes=10),
    SessionEndRequested(session_id="s1", source="websocket", reply_to="r"),
    ExchangeCompleted(
        session_id="s1",
        source="api",
        user_text="u",
        agent_text="a",
        intent="question",
        responder="host-1",
    ),
    ExchangeCompleted(
        session_id="s1",
        source="api",
        user_text="u",
        agent_text="",
        intent="statement",
        expired=True,
    ),
    ConversationReply(
        in_reply_to="e1",
        session_id="s1",
        user_text="u",
        agent_text="a",
        intent="statement",
        timestamp=NOW,
    ),
    SummaryReply(in_reply_to="e1", text="We explored: x."),
    ErrorReply(in_reply_to="e1", code="internal", message="boom"),
    SearchReply(in_reply_to="q1", query="u", results=[HIT]),
    HistoryReply(
        in_reply_to="q1",
        history=[HistoryItem(id=1, timestamp="t", user_text="u", agent_text="a", metadata="{}")],
    ),
    StatsReply(in_reply_to="q1", total_captures=3, unique_sessions=1, last_capture=None),
    SearchQuery(query="c++", limit=5, reply_to="r"),
    SearchQuery(query="c++", limit=5, reply_to="r", deadline=NOW),
    HistoryQuery(session_id="s1", limit=5, reply_to="r"),
    StatsQuery(reply_to="r"),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_through_json(message: BaseModel) -> None:
    again = type(message).model_validate_json(message.model_dump_json())
    assert again == message


@pytest.mark.parametrize(
    "message", [m for m in SAMPLES if hasattr(m, "in_reply_to")], ids=lambda m: type(m).__name__
)
def test_replies_are_told_apart_by_kind(message: BaseModel) -> None:
    parsed = TypeAdapter(AnyReply).validate_json(message.model_dump_json())
    assert type(parsed) is type(message)


@pytest.mark.parametrize(
    "message",
    [m for m in SAMPLES if isinstance(m, SearchQuery | HistoryQuery | StatsQuery)],
    ids=lambda m: type(m).__name__,
)
def test_archive_queries_are_told_apart_by_kind(message: BaseModel) -> None:
    assert type(TypeAdapter(AnyArchiveQuery).validate_json(message.model_dump_json())) is type(
        message
    )


def test_events_carry_the_common_fields() -> None:
    event = UtteranceReceived(session_id="s1", source="api", text="x")
    assert len(event.event_id) == 32
    assert event.occurred_at.tzinfo is not None
    assert event.reply_to is None


def test_unknown_fields_from_a_newer_producer_are_ignored() -> None:
    raw = '{"session_id": "s1", "source": "api", "text": "x", "added_later": 1}'
    assert UtteranceReceived.model_validate_json(raw).text == "x"


@pytest.mark.parametrize("bad", ["", "a" * 65, "has space", "../etc", "ü"])
def test_session_ids_outside_the_pattern_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        UtteranceReceived(session_id=bad, source="api", text="x")


def test_empty_utterance_is_refused() -> None:
    with pytest.raises(ValidationError):
        UtteranceReceived(session_id="s", source="api", text="")


def test_work_is_past_its_deadline_only_once_it_has_passed() -> None:
    event = UtteranceReceived(session_id="s", source="api", text="x", deadline=NOW)
    assert not event.past_deadline(NOW - timedelta(milliseconds=1))
    assert event.past_deadline(NOW)
    assert event.past_deadline(NOW + timedelta(seconds=1))
    # No deadline: nobody waits, the work never goes stale (older producers send none).
    assert not UtteranceReceived(session_id="s", source="api", text="x").past_deadline()
    assert not StatsQuery(reply_to="r").past_deadline()
    assert StatsQuery(reply_to="r", deadline=NOW).past_deadline(NOW)
