"""Credentials never reach a log: a filter that masks tokens in records of the loggers that
can see raw traffic.

Our own code never logs a token. Libraries can: at DEBUG, uvicorn's WebSocket
implementation logs every frame it receives (an ``auth`` frame carries a token) on
``uvicorn.error``. The filter masks, in the formatted message, whatever
``server.logs.redact`` recognises (JWTs, refresh and agent tokens, credentials): one set
of patterns for every log line.
"""

from __future__ import annotations

import logging

from server.logs import redact

# Loggers of libraries that see raw requests and frames.
TRAFFIC_LOGGERS = ("uvicorn.error", "uvicorn.access", "websockets", "websockets.server")


class TokenRedactor(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to fix; let logging report it
            return True
        # The arguments go too: a handler that serialises them (frames, requests) would
        # print what the message masked.
        record.msg, record.args = redact(message), None
        return True


_REDACTOR = TokenRedactor()


def install(names: tuple[str, ...] = TRAFFIC_LOGGERS) -> None:
    """Attach the filter to ``names`` (idempotent)."""
    for name in names:
        logger = logging.getLogger(name)
        if _REDACTOR not in logger.filters:
            logger.addFilter(_REDACTOR)
