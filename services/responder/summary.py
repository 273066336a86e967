"""End-of-session summary, as v1: the topics the learner talked about."""

import re
from collections import Counter

from services.responder.context import ContextExchange

_STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been
    before being below between both but by can could did do does doing down during each
    few for from further get got had has have having he her here hers herself him himself
    his how i if in into is it its itself just know like me more most my myself no nor
    not now of off on once only or other our ours out over own really same she should so
    some something such than that the their theirs them then there these they thing
    things think this those through to too under until up very want was we were what
    when where which while who whom why will with would you your yours yourself today
    learning learn learned trying going been maybe actually pretty kind lot much""".split()
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'+-]{2,}")
MAX_TOPICS = 3
NO_TOPICS = "Thanks for the conversation! Come back any time to keep exploring."


def topics(context: list[ContextExchange], limit: int = MAX_TOPICS) -> list[str]:
    counts: Counter[str] = Counter()
    first_spelling: dict[str, str] = {}
    for exchange in context:
        for word in _WORD.findall(exchange.user):
            key = word.lower().strip("'-")
            if key in _STOPWORDS or len(key) < 3:
                continue
            counts[key] += 1
            first_spelling.setdefault(key, word.strip("'-"))
    # most_common keeps first-seen order among equal counts.
    return [first_spelling[key] for key, _ in counts.most_common(limit)]


def summarize(context: list[ContextExchange]) -> str:
    found = topics(context)
    if not found:
        return NO_TOPICS
    return f"We explored: {', '.join(found)}. Great conversation!"
