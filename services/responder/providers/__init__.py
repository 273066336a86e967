"""Language-model providers behind one interface, and the rule that picks one."""

from services.responder.providers.base import (
    ChatMessage,
    LLMError,
    LLMProvider,
    LLMRateLimitedError,
    LLMUnavailableError,
)
from services.responder.settings import ResponderSettings
from shared.plugins import load_factory

__all__ = [
    "BUILTIN_PROVIDERS",
    "ChatMessage",
    "LLMError",
    "LLMProvider",
    "LLMRateLimitedError",
    "LLMUnavailableError",
    "choose_provider_name",
    "create_provider",
]

BUILTIN_PROVIDERS = ("anthropic", "openai", "local")


def choose_provider_name(settings: ResponderSettings) -> str:
    """LLM_PROVIDER if set; else anthropic with a key, openai with LLM_BASE_URL, else local.

    Empty strings count as unset, as they do when a compose file passes `KEY=`.
    """
    explicit = (settings.llm_provider or "").strip()
    if explicit:
        return explicit.lower() if explicit.lower() in BUILTIN_PROVIDERS else explicit
    if settings.anthropic_api_key is not None and settings.anthropic_api_key.get_secret_value():
        return "anthropic"
    if settings.llm_base_url:
        return "openai"
    return "local"


def create_provider(settings: ResponderSettings) -> LLMProvider:
    """The configured provider, constructed but not started (call `start()` once)."""
    choice = choose_provider_name(settings)
    # Imported on demand: a deployment pays only for the SDK or native library it
    # uses (llama_cpp loads a shared library on import).
    if choice == "anthropic":
        from services.responder.providers.anthropic import AnthropicProvider

        return AnthropicProvider(settings)
    if choice == "openai":
        from services.responder.providers.openai_compat import OpenAICompatProvider

        return OpenAICompatProvider(settings)
    if choice == "local":
        from services.responder.providers.local import LocalProvider

        return LocalProvider(settings)
    if ":" in choice:
        # mypy takes no Protocol as type[T] (python/mypy#4717); it is only inspected.
        return load_factory("LLM_PROVIDER", choice, settings, LLMProvider)  # type: ignore[type-abstract]
    raise ValueError(
        f"LLM_PROVIDER={choice!r} is not one of {', '.join(BUILTIN_PROVIDERS)} "
        "or a 'package.module:factory' path"
    )
