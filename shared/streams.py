"""Every stream, consumer group and Redis key name, defined once.

Services import these names instead of spelling strings, so a rename is one edit
and an operator can read the whole Redis layout in this file.
"""

from typing import Final

# Streams between services (design: PWA/Twilio -> gateway/telephony -> workers).
AUDIO_RECEIVED: Final = "audio.received"
UTTERANCE_RECEIVED: Final = "utterance.received"
SESSION_END_REQUESTED: Final = "session.end_requested"
EXCHANGE_COMPLETED: Final = "exchange.completed"
ARCHIVE_QUERIES: Final = "archive.queries"
# What telephony learns of a call after the fact (a reply cut short, a recording).
CALL_EVENTS: Final = "call.events"
# Messages a worker gave up on after too many deliveries, kept for an operator.
DEAD_LETTERS: Final = "dead.letters"


class Groups:
    """One consumer group per service: replicas of a service share its work."""

    TRANSCRIBER: Final = "transcriber"
    RESPONDER: Final = "responder"
    ARCHIVER: Final = "archiver"


def reply_stream(service: str, instance_id: str) -> str:
    """The stream that only one gateway or telephony instance reads its replies from."""
    return f"replies.{service}.{instance_id}"


# Pub/sub channel of cancels: the id of a request whose reply must stop now.
CANCELS: Final = "cancels"

# Registry of live reply streams (score: last heartbeat, unix seconds), so a
# surviving instance can delete the reply stream of one that died.
REPLY_STREAMS: Final = "replies.registry"


class Keys:
    """Redis keys that hold state rather than messages (v1 names kept)."""

    # Sorted set of session ids scored by last activity (unix seconds), so
    # /api/stats lists active sessions without SCAN.
    ACTIVE_SESSIONS: Final = "sessions:active"
    # A random value set once: gone or changed, Redis lost the data it was set
    # with (a flush, a restart without persistence). See shared.outbox.
    DATA_EPOCH: Final = "data.epoch"
    # Hash: how many entries of `dead.letters` came from each stream.
    DEAD_LETTER_COUNTS: Final = "dead.letters.counts"
    # SCAN pattern of every `api_key` (to list them; only their hashes are there).
    API_KEYS: Final = "auth:apikey:*"

    @staticmethod
    def context(session_id: str) -> str:
        return f"session:{session_id}:context"

    @staticmethod
    def metadata(session_id: str) -> str:
        return f"session:{session_id}:metadata"

    @staticmethod
    def session_owner(session_id: str) -> str:
        """The learner a session belongs to (shared.ownership)."""
        return f"session:{session_id}:learner"

    @staticmethod
    def exchange_done(event_id: str) -> str:
        """Marks an utterance whose exchange is already in the context (redelivery guard)."""
        return f"exchange:{event_id}:done"

    @staticmethod
    def cancel(event_id: str) -> str:
        """Set while the reply to this request must stop (its asker cancelled it)."""
        return f"cancel:{event_id}"

    @staticmethod
    def audio(event_id: str) -> str:
        """Claim-check key holding the bytes of one uploaded clip."""
        return f"audio:{event_id}"

    @staticmethod
    def ws_answer(session_id: str, answer_id: str) -> str:
        """The answer to the WebSocket message with the client's `answer_id` in this
        session, kept so a resend after a dropped connection is not answered twice."""
        return f"ws:{session_id}:answer:{answer_id}"

    @staticmethod
    def ws_event(session_id: str, answer_id: str) -> str:
        """The event id the WebSocket message with this `answer_id` was first answered
        under, which an attempt taking over from a dead gateway answers under too."""
        return f"ws:{session_id}:event:{answer_id}"

    @staticmethod
    def api_key(digest: str) -> str:
        """An API key's learner and label (JSON), under the key's SHA-256 (hex), never
        the key itself; deleted, the key is refused at once."""
        return f"auth:apikey:{digest}"

    @staticmethod
    def ws_ticket(digest: str) -> str:
        """A WebSocket ticket's caller (JSON), under the ticket's SHA-256, for
        WS_TICKET_TTL_S; taken (GETDEL) by the one connection that uses it."""
        return f"auth:ticket:{digest}"

    @staticmethod
    def revoked_token(jti: str) -> str:
        """Set while the JWT with this `jti` is revoked (until it would expire)."""
        return f"auth:revoked:{jti}"

    @staticmethod
    def phone_link(caller_hash: str) -> str:
        """The learner a phone number (by its keyed hash) is linked to (shared.phones)."""
        return f"phone:{caller_hash}:learner"

    @staticmethod
    def phone_code(code: str) -> str:
        """The keyed hash of the number a one-time link code was spoken to."""
        return f"phone:code:{code}"

    @staticmethod
    def phone_link_tries(learner: str) -> str:
        """How many link codes `learner` tried this minute."""
        return f"phone:tries:{learner}"

    @staticmethod
    def twilio_reply(session_id: str, event_id: str) -> str:
        """The reply to a caller's utterance (or that it is still awaited), kept so
        that whichever telephony instance Twilio's next webhook reaches can say it."""
        return f"twilio:{session_id}:reply:{event_id}"

    @staticmethod
    def twilio_ended(session_id: str) -> str:
        """Set once the call's session is ended, so it is ended (summarised) once."""
        return f"twilio:{session_id}:ended"
