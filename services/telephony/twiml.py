"""What the caller hears: every answer is TwiML built with the twilio SDK.

Gather mode (v1): each turn is a `<Gather input="speech">` whose `<Say>` the caller
may talk over (Twilio stops the speech when the caller starts), posting what was
heard to `/twilio/process-speech`. When a Gather hears nothing, the verbs after it
run: a re-prompt, never silence.
"""

from urllib.parse import urlencode

from twilio.twiml.voice_response import VoiceResponse

from services.telephony.settings import TelephonySettings

GREETING = "Hello! I'm your learning companion. Tell me what you're working on today."
NOT_HEARD = "I didn't catch that. Let's try again."
HOLD = "Let me think about that for a moment."
STILL_HOLDING = "Still thinking. Just a moment."
APOLOGY = "Sorry, something went wrong on my side. Could you say that again?"
FAREWELL_APOLOGY = "Sorry, something went wrong on my side. Please call again later. Goodbye."


class TwiML:
    def __init__(self, settings: TelephonySettings) -> None:
        self._voice = settings.voice
        self._language = settings.language
        self._prefix = settings.path_prefix

    def url(self, path: str, **query: str) -> str:
        """A URL Twilio resolves against the one it called (so the host and scheme
        of PUBLIC_BASE_URL are kept), with PUBLIC_BASE_URL's path in front."""
        return f"{self._prefix}{path}?{urlencode(query)}"

    def _say(self, response: VoiceResponse, text: str) -> None:
        response.say(text, voice=self._voice)

    def _gather(self, response: VoiceResponse, session_id: str, text: str) -> None:
        gather = response.gather(
            input="speech",
            language=self._language,
            enhanced=True,
            speech_timeout="auto",
            action=self.url("/twilio/process-speech", session_id=session_id),
            method="POST",
        )
        gather.say(text, voice=self._voice)

    def greeting(self, session_id: str) -> str:
        """v1's answer to a call: the greeting, listening; if nothing is heard, again."""
        response = VoiceResponse()
        self._gather(response, session_id, GREETING)
        self._say(response, NOT_HEARD)
        response.redirect(self.url("/twilio/voice", session_id=session_id), method="POST")
        return str(response.to_xml())

    def turn(self, session_id: str, text: str) -> str:
        """`text` said while listening for the caller's next words. Silence posts
        an empty result to process-speech, which asks again."""
        response = VoiceResponse()
        self._gather(response, session_id, text)
        response.redirect(self.url("/twilio/process-speech", session_id=session_id), method="POST")
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
