"""A language model that answers at once, for benchmarks only.

Loaded with LLM_PROVIDER=bench.instant_llm:InstantProvider, so the numbers measure
the system (gateway, streams, context, archive) and not a model. No user gets it by
default: it exists only in this folder.
"""

import re
from collections.abc import AsyncGenerator, Sequence

from services.responder.providers.base import ChatMessage
from services.responder.settings import ResponderSettings


class InstantProvider:
    name = "instant"
    model = "instant-echo"

    def __init__(self, settings: ResponderSettings) -> None:
        self._settings = settings

    async def start(self) -> None:
        return None

    async def stream(
        self,
        system: str,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
    ) -> AsyncGenerator[str, None]:
        # Word by word, as a model streams tokens: several pieces per reply.
        reply = f"Interesting: {messages[-1].content[:40]}. What made you think of that?"
        for word in re.findall(r"\s*\S+", reply):
            yield word

    async def aclose(self) -> None:
        return None
