"""The transcriber's span: `stt`, the speech-to-text call, under the consume span of
the clip's message.

No convention names speech recognition yet, so its attributes are the project's
own (`lva.*`). The transcript goes on the span only when the operator opted in
(OTEL_CAPTURE_CONTENT): it is the learner's words. With tracing off the span is
the API's non-recording one and the recogniser is not asked for anything more.
"""

import contextlib
from collections.abc import Iterator

from opentelemetry import trace

from services.transcriber.audio import Clip
from services.transcriber.stt.base import Hearing, SpeechToText, noting_hearing
from shared import telemetry

TRANSCRIPT = "lva.stt.transcript"


@contextlib.contextmanager
def transcribing(stt: SpeechToText, clip: Clip, session_id: str) -> Iterator[trace.Span]:
    """The `stt` span while `stt` transcribes `clip`; a failure marks it."""
    if not telemetry.enabled():
        # Not even a no-op span: one costs several microseconds a clip.
        yield trace.INVALID_SPAN
        return
    with telemetry.tracer(__name__).start_as_current_span(
        "stt", record_exception=False, set_status_on_exception=False
    ) as span:
        if not span.is_recording():
            yield span
            return
        span.set_attributes(
            {
                telemetry.SESSION_ID: session_id,
                "lva.stt.provider": stt.name,
                "lva.stt.model": stt.model,
                "lva.audio.format": clip.format,
                "lva.audio.duration_s": round(clip.duration_s, 3),
            }
        )
        with noting_hearing() as hearing:
            try:
                yield span
            except Exception as exc:
                telemetry.failed(span, type(exc).__name__)
                raise
            finally:
                _note(span, hearing)


def _note(span: trace.Span, hearing: Hearing) -> None:
    if hearing.language is not None:
        span.set_attribute("lva.stt.language", hearing.language)
    if hearing.no_speech_prob is not None:
        span.set_attribute("lva.stt.no_speech_prob", round(hearing.no_speech_prob, 4))
    if hearing.segments is not None:
        span.set_attribute("lva.stt.segments", hearing.segments)
