"""The companion's system prompt (v1) and the friendly replies used when the model fails."""

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


def build_messages(context: list[ContextExchange], user_text: str) -> list[ChatMessage]:
    messages: list[ChatMessage] = []
    for exchange in context:
        messages.append(ChatMessage(role="user", content=exchange.user))
        messages.append(ChatMessage(role="assistant", content=exchange.agent))
    messages.append(ChatMessage(role="user", content=user_text))
    return messages
