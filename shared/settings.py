"""Settings every service reads. Each service extends `CommonSettings` with its own.

Names and defaults of v1's environment variables are kept (REDIS_URL, REDIS_TTL, ...).
"""

import os
import socket
import uuid
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_instance_id() -> str:
    # Unique per process: it names this replica's consumer in every group and its
    # reply stream, so two replicas on one host never share either.
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    redis_url: str = "redis://localhost:6379"
    # Interface the service's HTTP server (API, or a worker's /health) binds to.
    host: str = "0.0.0.0"
    log_level: str = "INFO"
    # `json` (one object per line, with trace ids), `text`, or `auto`: text in a
    # terminal, JSON otherwise (a container, a supervisor, a file).
    log_format: Literal["auto", "json", "text"] = "auto"
    # Lifetime of a session's context in Redis (v1): also how long a session
    # counts as active in /api/stats.
    redis_ttl: int = 1800
    # Seconds a session stays its learner's after they last talked in it
    # (shared.ownership): longer than REDIS_TTL, so no context outlives it.
    session_owner_ttl_s: int = Field(30 * 24 * 3600, ge=60)
    instance_id: str = Field(default_factory=default_instance_id)
    # Connections each pool of a service may open to Redis (there are two: the
    # broker's and the service's own).
    redis_max_connections: int = 512
    # How long a starting service waits for Redis to answer before giving up.
    redis_connect_timeout: float = 30.0
    # A command that meets a broken connection (Redis restarted, failed over, a
    # connection it closed) is retried on a fresh one this many times, backing off
    # up to REDIS_RETRY_BACKOFF_MAX seconds between tries: about 6 s in all, so a
    # restart of a few seconds is invisible to callers.
    redis_retries: int = 10
    redis_retry_backoff_max: float = 1.0
    # Seconds a command may wait for Redis's answer (blocking reads wait at most 1 s
    # of that); without it, a Redis that stops answering would hang every caller.
    redis_socket_timeout: float = 10.0
    # A pooled connection unused this long is checked with PING before it is used.
    redis_health_check_interval: float = 15.0
    # XADD MAXLEN ~ cap on every stream: far above normal lag, it only bounds
    # memory when a consumer group is gone for a long time.
    stream_maxlen: int = 100_000
    # Replies are read within milliseconds: a short cap is plenty.
    reply_stream_maxlen: int = 10_000
    # A message pending (delivered, not acknowledged) this long is claimed by a
    # live replica and delivered again: it outlasts any normal handling time.
    reclaim_idle_ms: int = 60_000
    reclaim_interval_s: float = 5.0
    # A live consumer keeps what it holds for at most this long: a handler stuck
    # past it (far beyond the model's timeouts and retries) is taken for stuck,
    # and its message is reclaimed like a dead consumer's.
    max_hold_s: float = 600.0
    # Seconds a stopping worker (SIGTERM) waits for the handlers in flight; keep it
    # below the supervisor's kill timeout (Kubernetes' terminationGracePeriodSeconds
    # is 30 s by default, compose's stop_grace_period 10 s: set it there to more).
    shutdown_grace_s: float = Field(10.0, gt=0)
    # After this many deliveries a message goes to the dead-letter stream.
    max_deliveries: int = 5
    # A model or speech-to-text provider that fails this many calls in a row
    # (after the SDK's own retries) is not called for BREAKER_OPEN_S seconds:
    # learners get the apology at once (shared.breaker).
    breaker_failures: int = Field(5, ge=1)
    breaker_open_s: float = Field(30.0, gt=0)
    # A service keeps what it published until its consumers read it, for at most
    # this many seconds, and publishes it again if Redis loses its data meanwhile
    # (a flush, a restart without persistence; shared.outbox). 0: never.
    flush_resend_s: float = Field(300.0, ge=0)
    # How often a worker checks that its consumer groups exist and its subscribers
    # run, recreating and restarting them after a Redis flush or an empty restart.
    supervise_interval_s: float = 1.0
    # Where traces go, as OpenTelemetry's own variables name it: a collector's
    # base URL (Jaeger's http://localhost:4318 for http/protobuf, :4317 for grpc),
    # or a traces-only endpoint used as given. Unset: no tracing at all.
    otel_exporter_otlp_endpoint: str | None = None
    otel_exporter_otlp_traces_endpoint: str | None = None
    otel_exporter_otlp_protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    otel_exporter_otlp_traces_protocol: Literal["http/protobuf", "grpc"] | None = None
    # Put what the learner said and the companion answered on spans (off: the
    # GenAI conventions' advice, spans are often kept longer and seen by more people).
    otel_capture_content: bool = False
