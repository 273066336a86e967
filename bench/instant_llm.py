"""A language model that answers at once, for benchmarks only.

Loaded with LLM_PROVIDER=bench.instant_llm:InstantProvider, so the numbers measure
the system (gateway, streams, context, archive) and not a model. No user gets it by
default: it exists only in this folder.
"""

from collections.abc import Sequence

from services.responder.providers.base import ChatMessage, StopWhen
from services.responder.settings import ResponderSettings


class InstantProvider:
    name = "instant"
    model = "instant-echo"

    def __init__(self, settings: ResponderSettings) -> None:
        self._settings = settings

    async def start(self) -> None:
        return None

    async def complete(
        self,
        system: str,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
        enough: StopWhen | None = None,
    ) -> str:
        return f"Interesting: {messages[-1].content[:40]}. What made you think of that?"

    async def aclose(self) -> None:
        return None
