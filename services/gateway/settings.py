"""Gateway settings: where it listens, how long it waits, and the limits of input."""

from pathlib import Path

from pydantic import Field

from shared.settings import CommonSettings


class GatewaySettings(CommonSettings):
    port: int = 8000
    # Seconds to wait for the companion's reply before answering 504 / an error
    # message. Covers a cold model and a queue of other learners' messages.
    reply_timeout: float = 30.0
    # Seconds to wait for the archive (search, history, stats).
    archive_timeout: float = 10.0

    # Limits of input: beyond them a request gets a 400 / an error message.
    max_text_chars: int = 4000
    # A clip (v1: 25 MB); its base64 in a request may be a third larger.
    max_audio_bytes: int = 25 * 1024 * 1024
    # The transcriber's limit (same variable, MAX_AUDIO_DURATION), read here only so
    # the PWA stops recording before a clip would be refused.
    max_audio_duration: float = 60.0
    max_search_query_chars: int = 2000
    max_search_limit: int = 100
    max_history_limit: int = 200
    # /api/stats lists at most this many active session ids (most recent first).
    stats_max_session_ids: int = 100
    # Messages one WebSocket may have waiting for replies; more are refused.
    ws_max_pending: int = 8
    # Seconds the answer to a WebSocket message with an `id` is kept, so a client
    # resending it after a dropped connection gets that answer again instead of a
    # second one. It should outlast how long a client keeps unanswered messages.
    ws_replay_ttl: int = 3600

    # Seconds a clip's bytes wait in Redis for the transcriber (claim check).
    audio_ttl: int = 300
    # Decoded audio all connections of one gateway may hold at once, waiting for
    # its turn or for Redis (default: 8 clips of the largest size); more is refused
    # with 503 / a `busy` error instead of growing the process without bound.
    max_audio_bytes_held: int = 8 * 25 * 1024 * 1024
    # Entries of a stream waiting for its workers (consumer group lag) at which new
    # requests for it are refused with 503 / a `busy` error, before they are
    # published (shared.backlog): the workers could not answer them in time. Far
    # below STREAM_MAXLEN, so a stream is never trimmed of work. 0: no limit.
    max_backlog: int = Field(1000, ge=0)

    # Comma-separated origins allowed by CORS ("*": any).
    cors_origins: str = "*"

    # The PWA served at "/". Found from this file rather than the working directory,
    # so `python -m services.gateway` serves it from wherever it is started.
    frontend_dir: Path = Path(__file__).resolve().parents[2] / "frontend"

    @property
    def max_body_bytes(self) -> int:
        """Largest request or WebSocket message: a clip in base64 plus JSON around it."""
        return self.max_audio_bytes * 4 // 3 + 64 * 1024
