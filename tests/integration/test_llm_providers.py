"""Hosted providers with the real SDKs against local servers speaking their wire formats."""

import re
import sys
import time
import types
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest
from anthropic.types import RawMessageStreamEvent
from pydantic import TypeAdapter
from redis.asyncio import Redis

from services.responder.context import ContextStore
from services.responder.providers import (
    ChatMessage,
    LLMError,
    LLMProvider,
    LLMRateLimitedError,
    LLMUnavailableError,
    create_provider,
)
from services.responder.providers.anthropic import AnthropicProvider
from services.responder.providers.anthropic import _note_usage as _note_anthropic_usage
from services.responder.providers.base import Usage, complete, reporting_usage
from services.responder.providers.local import LocalProvider
from services.responder.providers.openai_compat import PLACEHOLDER_API_KEY, OpenAICompatProvider
from services.responder.providers.openai_compat import _note_usage as _note_openai_usage
from services.responder.service import Responder
from services.responder.settings import ResponderSettings
from shared.events import UtteranceReceived
from tests.support.tracing import RecordedSpans
from tests.wire import WireServer, stream_pieces
from tests.wire.anthropic_server import AnthropicWireServer
from tests.wire.openai_server import OpenAIWireServer

SYSTEM = "You are a patient tutor. Answer in at most three sentences."
HISTORY = [
    ChatMessage(role="user", content="What is photosynthesis?"),
    ChatMessage(role="assistant", content="It is how plants make food from light."),
    ChatMessage(role="user", content="Where does it happen?"),
]
REPLY = (
    "It happens in the chloroplasts, mostly in the leaves. "
    "Chlorophyll there captures the light. "
    "The plant then turns water and carbon dioxide into sugar."
)
ANTHROPIC_KEY = "sk-ant-test-key"


def settings(**overrides: Any) -> ResponderSettings:
    """Settings from these values alone: every provider field is given, so neither the
    process environment nor a .env file can change the outcome."""
    values: dict[str, Any] = {
        "llm_provider": None,
        "anthropic_api_key": None,
        "anthropic_base_url": None,
        "claude_model": "claude-haiku-4-5",
        "llm_base_url": None,
        "llm_model": "llama3.2",
        "llm_api_key": None,
        "llm_timeout": 5.0,
        "llm_max_retries": 0,
        "local_llm_model_path": None,
        **overrides,
    }
    return ResponderSettings(_env_file=None, **values)


@pytest.fixture(scope="module")
def anthropic_server() -> Iterator[AnthropicWireServer]:
    with AnthropicWireServer() as server:
        yield server


@pytest.fixture(scope="module")
def openai_server() -> Iterator[OpenAIWireServer]:
    with OpenAIWireServer() as server:
        yield server


@pytest.fixture
def anthropic_wire(anthropic_server: AnthropicWireServer) -> AnthropicWireServer:
    anthropic_server.reset()
    anthropic_server.reply_text = REPLY
    return anthropic_server


@pytest.fixture
def openai_wire(openai_server: OpenAIWireServer) -> OpenAIWireServer:
    openai_server.reset()
    openai_server.reply_text = REPLY
    return openai_server


@dataclass
class Target:
    """One hosted provider and the server it talks to."""

    server: WireServer
    config: dict[str, Any]


@pytest.fixture(params=["anthropic", "openai"])
def target(
    request: pytest.FixtureRequest,
    anthropic_wire: AnthropicWireServer,
    openai_wire: OpenAIWireServer,
) -> Target:
    if request.param == "anthropic":
        config = {"anthropic_api_key": ANTHROPIC_KEY, "anthropic_base_url": anthropic_wire.base_url}
        return Target(anthropic_wire, config)
    return Target(openai_wire, {"llm_base_url": openai_wire.base_url})


Make = Callable[..., Awaitable[LLMProvider]]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """Builds and starts providers from settings values; closes them after the test."""
    started: list[LLMProvider] = []

    async def build(**overrides: Any) -> LLMProvider:
        provider = create_provider(settings(**overrides))
        await provider.start()
        started.append(provider)
        return provider

    yield build
    for provider in started:
        await provider.aclose()


async def ask(provider: LLMProvider, *, max_tokens: int = 150) -> str:
    return await complete(provider, SYSTEM, HISTORY, max_tokens=max_tokens, temperature=0.4)


# -- the reply and the request -------------------------------------------------------


async def test_streamed_reply_comes_back_whole(target: Target, make: Make) -> None:
    assert len(stream_pieces(REPLY)) > 5, "the reply must arrive in several pieces"
    provider = await make(**target.config)
    assert await ask(provider) == REPLY
    assert target.server.last_request.body["stream"] is True


async def test_generation_stops_once_the_caller_has_enough(target: Target, make: Make) -> None:
    provider = await make(**target.config)
    seen: list[str] = []

    def enough(text: str) -> bool:
        seen.append(text)
        return len(text.split()) >= 4

    reply = await complete(
        provider, SYSTEM, HISTORY, max_tokens=150, temperature=0.4, enough=enough
    )
    # Pieces of two words arrive: the stream is left at the first that reaches four.
    assert REPLY.startswith(reply)
    assert 4 <= len(reply.split()) < len(REPLY.split())
    assert seen[-1] == reply


async def test_anthropic_request_carries_prompt_model_limit_and_history(
    anthropic_wire: AnthropicWireServer, make: Make
) -> None:
    provider = await make(
        anthropic_api_key=ANTHROPIC_KEY,
        anthropic_base_url=anthropic_wire.base_url,
        claude_model="claude-sonnet-4-6",
    )
    await ask(provider, max_tokens=120)

    sent = anthropic_wire.last_request
    assert sent.path == "/v1/messages"
    assert sent.body["model"] == "claude-sonnet-4-6"
    assert sent.body["system"] == SYSTEM
    assert sent.body["max_tokens"] == 120
    assert sent.body["messages"] == [m.model_dump() for m in HISTORY]
    # API version 2026-10-21 rejects sampling parameters; the server would 400.
    assert "temperature" not in sent.body
    # SDK 2.x sends the key as a bearer token; older ones used x-api-key.
    assert {sent.headers.get("x-api-key"), sent.headers.get("authorization")} & {
        ANTHROPIC_KEY,
        f"Bearer {ANTHROPIC_KEY}",
    }
    assert sent.headers.get("anthropic-version")


async def test_openai_request_carries_prompt_model_limits_and_history(
    openai_wire: OpenAIWireServer, make: Make
) -> None:
    provider = await make(
        llm_base_url=openai_wire.base_url, llm_model="qwen2.5:3b", llm_api_key="sk-local"
    )
    await complete(provider, SYSTEM, HISTORY, max_tokens=90, temperature=0.25)

    sent = openai_wire.last_request
    assert sent.path == "/v1/chat/completions"
    assert sent.body["model"] == "qwen2.5:3b"
    assert sent.body["max_tokens"] == 90
    assert sent.body["temperature"] == 0.25
    assert sent.body["messages"] == [
        {"role": "system", "content": SYSTEM},
        *(m.model_dump() for m in HISTORY),
    ]
    assert sent.headers["authorization"] == "Bearer sk-local"


async def test_openai_without_key_sends_placeholder(
    openai_wire: OpenAIWireServer, make: Make
) -> None:
    provider = await make(llm_base_url=openai_wire.base_url)
    await ask(provider)
    assert openai_wire.last_request.headers["authorization"] == f"Bearer {PLACEHOLDER_API_KEY}"


async def test_reply_cut_at_max_tokens_still_returns_the_text(target: Target, make: Make) -> None:
    provider = await make(**target.config)
    assert await ask(provider, max_tokens=4) == "It happens in the"


# -- usage and the chat span -------------------------------------------------------------

# What each wire server says of a whole reply and of one cut at max_tokens.
FINISHED = {"anthropic": "end_turn", "openai": "stop"}
CUT = {"anthropic": "max_tokens", "openai": "length"}


def provider_of(target: Target) -> str:
    return "anthropic" if isinstance(target.server, AnthropicWireServer) else "openai"


async def test_usage_and_finish_reason_are_reported(target: Target, make: Make) -> None:
    provider = await make(**target.config)
    with reporting_usage() as usage:
        assert await ask(provider) == REPLY
    assert usage.input_tokens is not None and usage.input_tokens > 0
    assert usage.output_tokens == len(REPLY.split())
    assert usage.finish_reason == FINISHED[provider_of(target)]


async def test_a_reply_cut_at_max_tokens_reports_why(target: Target, make: Make) -> None:
    provider = await make(**target.config)
    with reporting_usage() as usage:
        await ask(provider, max_tokens=4)
    assert usage.output_tokens == 4
    assert usage.finish_reason == CUT[provider_of(target)]


async def test_a_stream_closed_early_reports_no_made_up_output_count(
    target: Target, make: Make
) -> None:
    provider = await make(**target.config)
    with reporting_usage() as usage:
        reply = await complete(
            provider,
            SYSTEM,
            HISTORY,
            max_tokens=150,
            temperature=0.4,
            enough=lambda text: len(text.split()) >= 4,
        )
    assert len(reply.split()) < len(REPLY.split())
    # The figures (and the reason) come at the end of the stream, which was left.
    assert usage.output_tokens is None and usage.finish_reason is None


def test_anthropic_input_counts_what_its_prompt_cache_served() -> None:
    usage = Usage()
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-haiku-4-5",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 12,
                "cache_read_input_tokens": 900,
                "cache_creation_input_tokens": 30,
                "output_tokens": 1,
            },
        },
    }
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 42, "input_tokens": 12},
    }
    for event in (start, end):
        _note_anthropic_usage(usage, TypeAdapter(RawMessageStreamEvent).validate_python(event))
    assert usage == Usage(
        input_tokens=942, output_tokens=42, cache_read_tokens=900, finish_reason="end_turn"
    )


async def test_openai_usage_is_asked_for_only_when_someone_reads_it(
    openai_wire: OpenAIWireServer, make: Make
) -> None:
    provider = await make(llm_base_url=openai_wire.base_url)
    await ask(provider)
    assert "stream_options" not in openai_wire.last_request.body
    with reporting_usage():
        await ask(provider)
    assert openai_wire.last_request.body["stream_options"] == {"include_usage": True}


def test_openai_figures_of_odd_shapes_are_ignored_not_raised() -> None:
    usage = Usage()
    _note_openai_usage(usage, {"usage": {"prompt_tokens": "12", "completion_tokens": -1}})
    _note_openai_usage(usage, {"choices": [None]})
    _note_openai_usage(usage, {"choices": [{"finish_reason": 7}], "usage": []})
    assert usage == Usage()
    _note_openai_usage(
        usage,
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 30,
                "completion_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": 24},
            },
        },
    )
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens) == (30, 5, 24)


async def test_the_chat_span_has_the_genai_usage_of_each_provider(
    target: Target, make: Make, redis: Redis, spans: RecordedSpans
) -> None:
    provider = await make(**target.config, claude_model="claude-sonnet-4-6", llm_model="qwen3")
    responder = Responder(ContextStore(redis, max_exchanges=5, ttl_s=60), provider, settings())
    # Short enough for the shaper to let the model finish: a finish reason comes.
    target.server.reply_text = "Tides follow the moon. What made you wonder?"
    event = UtteranceReceived(session_id="s-genai", source="websocket", text="Why tides?")
    reply, _ = await responder.answer(event)
    assert reply is not None and reply.agent_text.startswith("Tides follow the moon.")

    name = provider_of(target)
    model = "claude-sonnet-4-6" if name == "anthropic" else "qwen3"
    chat = spans.one(f"chat {model}")
    attributes = dict(chat.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == name
    assert attributes["gen_ai.request.model"] == model
    assert attributes["gen_ai.request.max_tokens"] == 150
    input_tokens = attributes["gen_ai.usage.input_tokens"]
    assert isinstance(input_tokens, int) and input_tokens > 0
    assert attributes["gen_ai.usage.output_tokens"] == 8
    assert attributes["gen_ai.response.finish_reasons"] == (FINISHED[name],)
    # Anthropic's API version takes no temperature: the span claims none.
    assert ("gen_ai.request.temperature" in attributes) is (name == "openai")
    assert [e.name for e in chat.events] == ["gen_ai.first_token"]
    assert "Why tides?" not in str(attributes)


# -- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (429, LLMRateLimitedError),
        (401, LLMUnavailableError),
        (400, LLMUnavailableError),
        (500, LLMUnavailableError),
        (503, LLMUnavailableError),
    ],
)
async def test_error_status_maps_to_llm_error(
    target: Target, make: Make, status: int, expected: type[LLMError]
) -> None:
    target.server.fail_next(status)
    provider = await make(**target.config)
    with pytest.raises(LLMError) as caught:
        await ask(provider)
    assert type(caught.value) is expected
    assert len(target.server.requests) == 1, "llm_max_retries=0 must not retry"


async def test_anthropic_overloaded_529_is_rate_limited(
    anthropic_wire: AnthropicWireServer, make: Make
) -> None:
    anthropic_wire.fail_next(529)
    provider = await make(
        anthropic_api_key=ANTHROPIC_KEY, anthropic_base_url=anthropic_wire.base_url
    )
    with pytest.raises(LLMRateLimitedError):
        await ask(provider)


async def test_anthropic_overloaded_mid_stream_is_rate_limited(
    anthropic_wire: AnthropicWireServer, make: Make
) -> None:
    anthropic_wire.stream_error = "overloaded_error"
    provider = await make(
        anthropic_api_key=ANTHROPIC_KEY, anthropic_base_url=anthropic_wire.base_url
    )
    with pytest.raises(LLMRateLimitedError):
        await ask(provider)


async def test_openai_error_mid_stream_is_unavailable(
    openai_wire: OpenAIWireServer, make: Make
) -> None:
    openai_wire.stream_error = "server_error"
    provider = await make(llm_base_url=openai_wire.base_url)
    with pytest.raises(LLMUnavailableError):
        await ask(provider)


async def test_wrong_key_is_unavailable(target: Target, make: Make) -> None:
    target.server.api_key = "the-right-key"
    provider = await make(**target.config, llm_api_key="a-wrong-key")
    with pytest.raises(LLMUnavailableError):
        await ask(provider)


async def test_no_answer_within_timeout_is_unavailable(target: Target, make: Make) -> None:
    target.server.delay = 2.0
    provider = await make(**target.config, llm_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(LLMUnavailableError):
        await ask(provider)
    assert time.monotonic() - started < 2.0, "the client must give up before the server answers"


async def test_stream_stalling_midway_is_unavailable(target: Target, make: Make) -> None:
    # Headers and a first piece arrive in time; the rest does not. The Anthropic SDK
    # lets this transport error through unwrapped, so the provider must map it.
    target.server.stream_stall = 2.0
    provider = await make(**target.config, llm_timeout=0.3)
    with pytest.raises(LLMUnavailableError):
        await ask(provider)


async def test_connection_cut_midway_is_unavailable(target: Target, make: Make) -> None:
    target.server.stream_drop = True
    provider = await make(**target.config)
    with pytest.raises(LLMUnavailableError):
        await ask(provider)


async def test_empty_reply_is_unavailable(target: Target, make: Make) -> None:
    target.server.reply_text = ""
    provider = await make(**target.config)
    with pytest.raises(LLMUnavailableError):
        await ask(provider)


async def test_server_error_is_retried_when_retries_allowed(target: Target, make: Make) -> None:
    target.server.fail_next(500, count=1)
    provider = await make(**target.config, llm_max_retries=1)
    assert await ask(provider) == REPLY
    assert len(target.server.requests) == 2


async def test_unreachable_endpoint_is_unavailable(make: Make) -> None:
    # A port that was free a moment ago: nothing listens there now.
    with OpenAIWireServer() as gone:
        url = gone.base_url
    provider = await make(llm_base_url=url)
    with pytest.raises(LLMUnavailableError):
        await ask(provider)


async def test_complete_before_start_is_a_programming_error(
    anthropic_wire: AnthropicWireServer,
) -> None:
    provider = create_provider(
        settings(anthropic_api_key=ANTHROPIC_KEY, anthropic_base_url=anthropic_wire.base_url)
    )
    with pytest.raises(RuntimeError, match="start"):
        await ask(provider)


# -- the servers' non-streaming formats, for later users of tests/wire -------------------


async def test_anthropic_server_non_streaming_message_parses(
    anthropic_wire: AnthropicWireServer,
) -> None:
    client = anthropic.AsyncAnthropic(
        api_key=ANTHROPIC_KEY, base_url=anthropic_wire.base_url, max_retries=0
    )
    async with client:
        message = await client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=50,
            messages=[{"role": "user", "content": "Hi"}],
        )
    assert message.content[0].type == "text"
    assert message.content[0].text == REPLY
    assert message.stop_reason == "end_turn"


async def test_openai_server_non_streaming_completion_parses(
    openai_wire: OpenAIWireServer,
) -> None:
    client = openai.AsyncOpenAI(api_key="k", base_url=openai_wire.base_url, max_retries=0)
    async with client:
        completion = await client.chat.completions.create(
            model="llama3.2", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
    assert completion.choices[0].message.content == "It happens in the"
    assert completion.choices[0].finish_reason == "length"


# -- which provider --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, LocalProvider),
        ({"anthropic_api_key": "k"}, AnthropicProvider),
        ({"anthropic_api_key": "k", "llm_base_url": "http://127.0.0.1:9/v1"}, AnthropicProvider),
        ({"llm_base_url": "http://127.0.0.1:9/v1"}, OpenAICompatProvider),
        # Empty values, as `KEY=` in a compose file gives, count as unset.
        ({"anthropic_api_key": "", "llm_base_url": ""}, LocalProvider),
        ({"llm_provider": "", "anthropic_api_key": "k"}, AnthropicProvider),
        # An explicit choice wins over whatever else is set.
        ({"llm_provider": "local", "anthropic_api_key": "k"}, LocalProvider),
        (
            {"llm_provider": "openai", "anthropic_api_key": "k", "llm_base_url": "http://h/v1"},
            OpenAICompatProvider,
        ),
        (
            {"llm_provider": "anthropic", "anthropic_api_key": "k", "llm_base_url": "http://h/v1"},
            AnthropicProvider,
        ),
        ({"llm_provider": " Anthropic ", "anthropic_api_key": "k"}, AnthropicProvider),
    ],
)
def test_choice_rule(values: dict[str, Any], expected: type[LLMProvider]) -> None:
    provider = create_provider(settings(**values))
    assert type(provider) is expected
    assert isinstance(provider, LLMProvider)


def test_chosen_provider_names_its_model() -> None:
    provider = create_provider(settings(anthropic_api_key="k", claude_model="claude-opus-4-8"))
    assert (provider.name, provider.model) == ("anthropic", "claude-opus-4-8")
    provider = create_provider(settings(llm_base_url="http://h/v1", llm_model="mistral"))
    assert (provider.name, provider.model) == ("openai", "mistral")


def test_unknown_provider_names_the_allowed_values() -> None:
    with pytest.raises(ValueError, match="gemini") as caught:
        create_provider(settings(llm_provider="gemini"))
    for allowed in ("anthropic", "openai", "local", "module:factory"):
        assert allowed in str(caught.value)


@pytest.mark.parametrize(
    ("values", "needs"),
    [
        ({"llm_provider": "anthropic"}, "ANTHROPIC_API_KEY"),
        ({"llm_provider": "openai"}, "LLM_BASE_URL"),
    ],
)
def test_explicit_provider_without_its_settings_says_what_is_missing(
    values: dict[str, Any], needs: str
) -> None:
    with pytest.raises(ValueError, match=needs):
        create_provider(settings(**values))


# -- "package.module:factory" ---------------------------------------------------------


class EchoProvider:
    """A stand-in such as a benchmark would plug in."""

    name = "echo"

    def __init__(self, config: ResponderSettings) -> None:
        self.model = config.llm_model
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def stream(
        self, system: str, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> AsyncGenerator[str, None]:
        for word in re.findall(r"\s*\S+", f"echo: {messages[-1].content}"):
            yield word

    async def aclose(self) -> None:
        self.started = False


class OldEchoProvider(EchoProvider):
    """A provider whose stream takes no `temperature`: the responder passes it always."""

    async def stream(  # type: ignore[override]
        self, system: str, messages: Sequence[ChatMessage], *, max_tokens: int
    ) -> AsyncGenerator[str, None]:
        yield "never called"


class BlockingEchoProvider(EchoProvider):
    async def stream(  # type: ignore[override]
        self, system: str, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> str:
        return "never called"


class EchoFactory:
    @staticmethod
    def build(config: ResponderSettings) -> EchoProvider:
        return EchoProvider(config)


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch) -> str:
    module = types.ModuleType("llm_plugin_for_tests")
    module.make_echo = EchoProvider  # type: ignore[attr-defined]
    module.EchoFactory = EchoFactory  # type: ignore[attr-defined]
    module.make_nothing = lambda config: object()  # type: ignore[attr-defined]
    module.make_old = OldEchoProvider  # type: ignore[attr-defined]
    module.make_blocking = BlockingEchoProvider  # type: ignore[attr-defined]
    module.not_callable = 42  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module.__name__


async def test_factory_path_builds_the_custom_provider(plugin: str, make: Make) -> None:
    provider = await make(llm_provider=f"{plugin}:make_echo", llm_model="bench-double")
    assert isinstance(provider, EchoProvider)
    assert provider.started
    assert provider.model == "bench-double"
    assert await ask(provider) == "echo: Where does it happen?"


def test_factory_path_may_name_an_attribute_of_an_attribute(plugin: str) -> None:
    provider = create_provider(settings(llm_provider=f"{plugin}:EchoFactory.build"))
    assert isinstance(provider, EchoProvider)


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("no_such_module_anywhere:make", ValueError, "No module named"),
        ("{plugin}:missing", ValueError, "has no attribute 'missing'"),
        ("{plugin}:not_callable", ValueError, "not callable"),
        ("{plugin}:make_nothing", TypeError, "not a usable LLMProvider: no attribute 'name'"),
        ("{plugin}:make_old", TypeError, r"stream\(\) cannot be called as .*temperature"),
        ("{plugin}:make_blocking", TypeError, r"stream\(\) must be an async generator"),
        (":make_echo", ValueError, "package.module:factory"),
    ],
)
def test_factory_path_errors_are_clear(
    plugin: str, spec: str, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        create_provider(settings(llm_provider=spec.format(plugin=plugin)))
