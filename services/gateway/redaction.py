"""Credentials out of the server's own log lines.

uvicorn logs each WebSocket's path with its query string ('"WebSocket /ws/s?ticket=..."
[accepted]'). A ticket is single-use and lives seconds, so one in a log is of no use
to its reader; it is blanked all the same, and so is anything a client put in a URL
under a token's name, which the gateway refuses (a long-lived token in a URL is a leak).
"""

import logging
import re

# Query parameters whose values never reach a log line.
SECRET_PARAMS = ("ticket", "token", "access_token", "api_key")
_SECRET_VALUE = re.compile(r"(?i)\b(" + "|".join(SECRET_PARAMS) + r")=[^&\s\"']*")
REDACTED = "[redacted]"


def redact(text: str) -> str:
    return _SECRET_VALUE.sub(rf"\1={REDACTED}", text)


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


# uvicorn's loggers: a filter on a logger sees what is logged to that very logger.
UVICORN_LOGGERS = ("uvicorn.error", "uvicorn.access")


def redact_tickets() -> None:
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
