"""Twilio's ConversationRelay WebSocket messages, one pydantic model each.

Twilio sends `setup` once, then `prompt` (what the caller said, transcribed by
Twilio), `interrupt` (the caller talked over the reply), `dtmf` and `error`. We
send `text` tokens, which Twilio speaks as they come, and `end`. Unknown fields
are ignored: Twilio adds some (and message types) without notice.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Incoming(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class Setup(_Incoming):
    type: Literal["setup"]
    session_id: str = Field(default="", alias="sessionId")
    call_sid: str = Field(alias="callSid")
    # The caller's number: hashed at once (services.telephony.privacy), never kept.
    from_: str = Field(default="", alias="from")
    direction: str = ""
    custom_parameters: dict[str, str] = Field(default_factory=dict, alias="customParameters")


class Prompt(_Incoming):
    type: Literal["prompt"]
    voice_prompt: str = Field(default="", alias="voicePrompt")
    lang: str = ""
    # False for a partial prompt (partialPrompts on): the caller is still talking.
    last: bool = True


class Interrupt(_Incoming):
    type: Literal["interrupt"]
    # What had been spoken of the reply when the caller started talking.
    utterance_until_interrupt: str = Field(default="", alias="utteranceUntilInterrupt")
    # Twilio sends it as a string ("460") or a number.
    duration_until_interrupt_ms: int | None = Field(
        default=None, ge=0, alias="durationUntilInterruptMs"
    )


class Dtmf(_Incoming):
    type: Literal["dtmf"]
    digit: str = ""


class RelayError(_Incoming):
    type: Literal["error"]
    description: str = ""


Incoming = Annotated[Setup | Prompt | Interrupt | Dtmf | RelayError, Field(discriminator="type")]
KNOWN_TYPES = frozenset({"setup", "prompt", "interrupt", "dtmf", "error"})
incoming_adapter: TypeAdapter[Incoming] = TypeAdapter(Incoming)


class TextToken(BaseModel):
    """Text for Twilio to speak; `last` ends the reply (Twilio flushes its speech)."""

    type: Literal["text"] = "text"
    token: str
    last: bool


class EndSession(BaseModel):
    """End the ConversationRelay session; Twilio posts `handoffData` to the
    `<Connect action>` URL."""

    type: Literal["end"] = "end"
    handoff_data: str = Field(serialization_alias="handoffData")
