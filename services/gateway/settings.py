"""Gateway settings: where it listens, how long it waits, and the limits of input."""

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
    max_search_query_chars: int = 2000
    max_search_limit: int = 100
    max_history_limit: int = 200
    # /api/stats lists at most this many active session ids (most recent first).
    stats_max_session_ids: int = 100
    # Messages one WebSocket may have waiting for replies; more are refused.
    ws_max_pending: int = 8

    # Seconds a clip's bytes wait in Redis for the transcriber (claim check).
    audio_ttl: int = 300
    # Decoded audio all connections of one gateway may hold at once, waiting for
    # its turn or for Redis (default: 8 clips of the largest size); more is refused
    # with 503 / a `busy` error instead of growing the process without bound.
    max_audio_bytes_held: int = 8 * 25 * 1024 * 1024

    # Comma-separated origins allowed by CORS ("*": any).
    cors_origins: str = "*"

    @property
    def max_body_bytes(self) -> int:
        """Largest request or WebSocket message: a clip in base64 plus JSON around it."""
        return self.max_audio_bytes * 4 // 3 + 64 * 1024
