"""The companion's system prompt (v1) and the friendly replies used when the model fails."""

import math

from services.responder.context import ContextExchange
from services.responder.providers.base import ChatMessage

SYSTEM_PROMPT = """You are a personal learning companion helping capture and develop ideas.

Core behaviors:
- Ask ONE clarifying question for vague responses
- Connect new ideas to previous topics
- Keep responses under 3 sentences
- Never lecture unless explicitly asked
- Mirror the user's energy level"""

# v1's replies when the model cannot answer; the learner's words are still archived.
RATE_LIMITED_REPLY = "I need a moment to catch up. Could you say that again in a few seconds?"
UNAVAILABLE_REPLY = "I'm having trouble connecting right now. Let's try again in a moment."
UNEXPECTED_REPLY = "Something went wrong on my end. Could you say that once more?"


def stable_window(context: list[ContextExchange], total: int, block: int) -> list[ContextExchange]:
    """The earlier exchanges to put before a new message, chosen so that the
    prompt starts the same way for `block` turns in a row.

    `context` holds the last few exchanges (at most MAX_CONTEXT_EXCHANGES) and
    `total` counts every exchange of the session so far. Sliding the window by one
    each turn would change the prompt's start every turn, and every model server
    would then evaluate the whole prompt again (0.9 to 2.5 s for 400 tokens with
    the embedded model on this machine); moved `block` exchanges at a time, the
    servers' prompt caches (llama.cpp's, vLLM's, Ollama's) reuse it and only the
    newest turn is evaluated. A turn then sees between `len - block + 1` and all
    of the stored exchanges. `block` 1 is v1's plain sliding window.
    """
    kept = len(context)
    total = max(total, kept)
    if block <= 1 or total <= kept:
        return context
    # Exchanges are numbered 1..total; the store holds total-kept+1..total.
    first = 1 + block * math.ceil((total - kept) / block)
    return context[first - (total - kept + 1) :]


def build_messages(context: list[ContextExchange], user_text: str) -> list[ChatMessage]:
    messages: list[ChatMessage] = []
    for exchange in context:
        messages.append(ChatMessage(role="user", content=exchange.user))
        messages.append(ChatMessage(role="assistant", content=exchange.agent))
    messages.append(ChatMessage(role="user", content=user_text))
    return messages
