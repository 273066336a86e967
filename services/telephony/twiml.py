"""What the caller hears: every answer is TwiML built with the twilio SDK.

Gather mode (v1): each turn is a `<Gather input="speech">` whose `<Say>` the caller
may talk over (Twilio stops the speech when the caller starts), posting what was
heard to `/twilio/process-speech`. When a Gather hears nothing, the verbs after it
run: a re-prompt, never silence. The URLs count the turns in a row with nothing
clear heard (`silent`), so a line left open ends after MAX_REPROMPTS of them.

Relay mode: `<Connect><ConversationRelay>`, after which the call is a WebSocket
(services.telephony.relay) until it ends and Twilio asks the `<Connect action>`.
"""

from urllib.parse import urlencode, urlsplit

from twilio.twiml.voice_response import VoiceResponse

from services.telephony.settings import TelephonySettings

GREETING = "Hello! I'm your learning companion. Tell me what you're working on today."
NOT_HEARD = "I didn't catch that. Let's try again."
HOLD = "Let me think about that for a moment."
STILL_HOLDING = "Still thinking. Just a moment."
APOLOGY = "Sorry, something went wrong on my side. Could you say that again?"
FAREWELL_APOLOGY = "Sorry, something went wrong on my side. Please call again later. Goodbye."
SILENT_FAREWELL = "I can't hear you, so I'll hang up now. Call again any time. Goodbye."
_WS_SCHEMES = {"http": "ws", "https": "wss"}


def relay_url(base: str, path: str, **query: str) -> str:
    """The ws(s):// URL of `path` on the host `base` (an http(s) URL) names."""
    parts = urlsplit(base)
    scheme = _WS_SCHEMES.get(parts.scheme, parts.scheme)
    root = parts._replace(scheme=scheme, query="", fragment="").geturl().rstrip("/")
    return f"{root}{path}?{urlencode(query)}"


class TwiML:
    def __init__(self, settings: TelephonySettings) -> None:
        self._settings = settings
        self._voice = settings.voice
        self._language = settings.language
        self._prefix = settings.path_prefix

    def url(self, path: str, **query: str) -> str:
        """A URL Twilio resolves against the one it called (so the host and scheme
        of PUBLIC_BASE_URL are kept), with PUBLIC_BASE_URL's path in front."""
        return f"{self._prefix}{path}?{urlencode(query)}"

    def _links(self, session_id: str, silent: int) -> dict[str, str]:
        return {"session_id": session_id, **({"silent": str(silent)} if silent else {})}

    def _record(self, response: VoiceResponse, session_id: str) -> None:
        """Record the call, if the operator chose to: Twilio posts the recording's
        details to /twilio/recording once it is ready."""
        if not self._settings.twilio_record_calls:
            return
        start = response.start()
        start.recording(
            recording_status_callback=self.url("/twilio/recording", session_id=session_id),
            recording_status_callback_method="POST",
            recording_status_callback_event="completed",
        )

    def _say(self, response: VoiceResponse, text: str) -> None:
        response.say(text, voice=self._voice)

    def _gather(self, response: VoiceResponse, session_id: str, text: str, silent: int) -> None:
        gather = response.gather(
            input="speech",
            language=self._language,
            enhanced=True,
            speech_timeout="auto",
            action=self.url("/twilio/process-speech", **self._links(session_id, silent)),
            method="POST",
        )
        gather.say(text, voice=self._voice)

    def greeting(self, session_id: str, *, silent: int = 0) -> str:
        """v1's answer to a call: the greeting, listening; if nothing is heard, again."""
        response = VoiceResponse()
        if silent == 0:
            self._record(response, session_id)
        self._gather(response, session_id, GREETING, silent)
        self._say(response, NOT_HEARD)
        voice = self.url("/twilio/voice", **self._links(session_id, silent + 1))
        response.redirect(voice, method="POST")
        return str(response.to_xml())

    def turn(self, session_id: str, text: str, *, silent: int = 0) -> str:
        """`text` said while listening for the caller's next words. Silence posts
        an empty result to process-speech, which asks again. `silent`: the turns in
        a row that heard nothing clear so far (process-speech counts the next)."""
        response = VoiceResponse()
        self._gather(response, session_id, text, silent)
        again = self.url("/twilio/process-speech", **self._links(session_id, silent))
        response.redirect(again, method="POST")
        return str(response.to_xml())

    def relay(self, session_id: str, base: str) -> str:
        """Relay mode's answer to a call: the call becomes a ConversationRelay
        WebSocket to this service at `base` (PUBLIC_BASE_URL, or the URL called)."""
        response = VoiceResponse()
        self._record(response, session_id)
        connect = response.connect(
            action=self.url("/twilio/relay-ended", session_id=session_id), method="POST"
        )
        connect.conversation_relay(
            url=relay_url(base, "/twilio/relay", session_id=session_id),
            welcome_greeting=GREETING,
            welcome_greeting_interruptible="any",
            interruptible="any",
            language=self._language,
            tts_provider=self._settings.relay_tts_provider,
            voice=self._settings.relay_voice,
            dtmf_detection=True,
        )
        return str(response.to_xml())

    def hang_up(self) -> str:
        response = VoiceResponse()
        response.hangup()
        return str(response.to_xml())

    def hold(self, session_id: str, event_id: str, *, first: bool) -> str:
        """The reply is not there yet: a short phrase, then the next webhook waits."""
        response = VoiceResponse()
        self._say(response, HOLD if first else STILL_HOLDING)
        response.redirect(
            self.url("/twilio/reply", session_id=session_id, event_id=event_id), method="POST"
        )
        return str(response.to_xml())

    def farewell(self, text: str) -> str:
        """`text`, then the call ends: for a request no conversation can follow."""
        response = VoiceResponse()
        self._say(response, text)
        response.hangup()
        return str(response.to_xml())

    @staticmethod
    def empty() -> str:
        return str(VoiceResponse().to_xml())
