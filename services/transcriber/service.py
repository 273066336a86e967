"""The transcriber's decisions, free of any broker: a clip in Redis in, and out
either the learner's words (an utterance for the responder) or a reply to the asker."""

import asyncio
import logging
import time

from redis.asyncio import Redis

from services.transcriber.audio import AudioError, load_clip
from services.transcriber.cleanup import clean_transcript
from services.transcriber.settings import TranscriberSettings
from services.transcriber.stt.base import SpeechToText, STTRateLimitedError, STTUnavailableError
from services.transcriber.tracing import TRANSCRIPT, transcribing
from shared import telemetry
from shared.events import (
    AudioReceived,
    ConversationReply,
    ErrorCode,
    ErrorReply,
    Reply,
    Timings,
    TranscriptReply,
    UtteranceReceived,
    utcnow,
)

log = logging.getLogger(__name__)

# v1's answer when nothing was understood; the language model is not asked.
NO_SPEECH_REPLY = "I didn't catch that. Let's try again."
EXPIRED = "the audio expired before it could be transcribed; please send it again"
BUSY = "speech recognition is busy right now; please try again in a moment"
UNAVAILABLE = "speech recognition is unavailable right now; please try again in a moment"


class Transcriber:
    def __init__(self, redis: Redis, stt: SpeechToText, settings: TranscriberSettings) -> None:
        self._redis = redis
        self._stt = stt
        self._settings = settings

    def _error(self, event: AudioReceived, code: ErrorCode, message: str) -> ErrorReply:
        return ErrorReply(
            in_reply_to=event.event_id, session_id=event.session_id, code=code, message=message
        )

    async def hear(self, event: AudioReceived) -> UtteranceReceived | Reply | None:
        """The learner's words, or a reply for the asker; None when nobody waits.

        A clip whose asker gave up is not transcribed: transcribing it costs what
        a backlog can least afford, for words the learner was told to send again.
        """
        if event.past_deadline():
            log.info(
                "clip %s on session %s expired before it was transcribed: dropped",
                event.event_id,
                event.session_id,
            )
            return None
        started = utcnow()
        began = time.perf_counter()
        data = await self._redis.get(event.audio_key)
        if not isinstance(data, bytes):
            return self._error(event, "invalid_audio", EXPIRED)
        try:
            # Decoding is CPU work in PyAV: off the event loop.
            clip = await asyncio.to_thread(
                load_clip,
                data,
                max_bytes=self._settings.max_audio_bytes,
                max_duration_s=self._settings.max_audio_duration,
            )
        except AudioError as exc:
            log.info("refused audio on session %s: %s", event.session_id, exc.message)
            return self._error(event, exc.code, exc.message)
        try:
            with transcribing(self._stt, clip, event.session_id) as span:
                raw = await self._stt.transcribe(clip)
                telemetry.content(span, TRANSCRIPT, raw)
        except STTRateLimitedError:
            log.warning("speech-to-text %s is rate limited", self._stt.name)
            return self._error(event, "transcription_failed", BUSY)
        except STTUnavailableError as exc:
            log.error("speech-to-text %s unavailable: %s", self._stt.name, exc)
            return self._error(event, "transcription_failed", UNAVAILABLE)
        timings = Timings(
            queued=round(max(0.0, (started - event.occurred_at).total_seconds() * 1000), 2),
            transcribe=round((time.perf_counter() - began) * 1000, 2),
        )
        text = clean_transcript(raw)
        log.debug("%.1f s %s clip heard as %r (raw %r)", clip.duration_s, clip.format, text, raw)
        if not text:
            return ConversationReply(
                in_reply_to=event.event_id,
                session_id=event.session_id,
                user_text="",
                agent_text=NO_SPEECH_REPLY,
                intent="statement",
                timestamp=utcnow(),
                timings=timings,
            )
        # Same event id: the utterance is the clip's words, one id (and one trace)
        # from the gateway to the archive, and the asker's reply answers that id.
        return UtteranceReceived(
            event_id=event.event_id,
            session_id=event.session_id,
            source=event.source,
            learner=event.learner,
            reply_to=event.reply_to,
            occurred_at=event.occurred_at,
            deadline=event.deadline,
            text=text,
            input="audio",
            stream=event.stream,
            timings=timings,
            published_at=utcnow(),
        )

    @staticmethod
    def transcript(event: AudioReceived, heard: UtteranceReceived) -> TranscriptReply | None:
        """What was heard, for an asker that shows it before the reply comes."""
        if not event.stream:
            return None
        return TranscriptReply(
            in_reply_to=event.event_id, session_id=event.session_id, text=heard.text
        )

    async def forget(self, event: AudioReceived) -> None:
        """Delete the clip's bytes once its outcome is published."""
        await self._redis.delete(event.audio_key)
