"""Structured logs: one JSON object per line, with the request or connection id and the tenant.

What is logged is chosen with care: no password, token, Authorization or Cookie header,
message body, key or credentialed URL is ever passed to a logger. ``redact`` is the safety
net behind that rule: every formatted line goes through it, so a secret that slipped into a
message, an argument or a traceback is replaced before it is written. Query strings are
stripped from the paths uvicorn logs (they are where clients put secrets by mistake).
"""

from __future__ import annotations

import logging
import re
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.json import JsonFormatter

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
conn_id_var: ContextVar[str | None] = ContextVar("conn_id", default=None)
tenant_id_var: ContextVar[str | None] = ContextVar("tenant_id", default=None)

_CONTEXT = (("request_id", request_id_var), ("conn_id", conn_id_var), ("tenant_id", tenant_id_var))

_SECRETS: list[tuple[re.Pattern[str], str]] = [
    # JWTs (a base64url JSON header always starts "eyJ")
    (re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.?[A-Za-z0-9_-]*"), "[jwt]"),
    (re.compile(r"rt1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"), "[refresh-token]"),
    (re.compile(r"bay_[A-Za-z0-9_-]{8,}"), "[agent-token]"),
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]+"), r"\1\2[redacted]"),
    # credentials inside URLs: scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s\"']*:)[^@\s\"']+@"), r"\1[redacted]@"),
    # key=value / "key": "value" for keys that name secrets
    (
        re.compile(
            r"(?i)((?:password|passwd|secret|token|authorization|cookie|api[_-]?key)"
            r"\\?\"?\s*[:=]\s*\\?\"?)[^\"\\,;&\s}]+"
        ),
        r"\1[redacted]",
    ),
]


def redact(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def bind(**values: str | None) -> None:
    """Attach ``request_id``, ``conn_id`` or ``tenant_id`` to every log line of this task."""
    for name, var in _CONTEXT:
        if name in values:
            var.set(values[name])


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _CONTEXT:
            value = var.get()
            if value is not None and not hasattr(record, name):
                setattr(record, name, value)
        return True


class StripQueryStrings(logging.Filter):
    """uvicorn logs request paths with their query strings; keep the path only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                a.split("?", 1)[0] if isinstance(a, str) and a.startswith("/") else a
                for a in record.args
            )
        return True


class DropWireTraces(logging.Filter):
    """uvicorn (and the websockets library through it) logs every header and frame at DEBUG:
    Authorization headers, tokens and message bodies. Those lines never leave the process."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno < logging.INFO and record.name.startswith("uvicorn"))


class RedactingJsonFormatter(JsonFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class RedactingTextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def uvicorn_level(level: str) -> str:
    """uvicorn's own level: never below info (its debug output is wire traces)."""
    return "info" if level.lower() in ("debug", "trace") else level.lower()


def logging_config(log_format: str = "json", level: str = "info") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` document for the server and uvicorn's own loggers."""
    level = level.upper()
    quiet = uvicorn_level(level).upper()
    formatter: dict[str, Any]
    if log_format == "text":
        formatter = {
            "()": RedactingTextFormatter,
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
        }
    else:
        formatter = {
            "()": RedactingJsonFormatter,
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger", "asctime": "time"},
        }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "context": {"()": ContextFilter},
            "strip_query": {"()": StripQueryStrings},
            "drop_wire": {"()": DropWireTraces},
        },
        "formatters": {"default": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
                "filters": ["drop_wire", "context", "strip_query"],
            }
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
        "loggers": {
            "baychat": {"level": level},
            "uvicorn": {"handlers": ["stderr"], "level": quiet, "propagate": False},
            "uvicorn.error": {"level": quiet},
            "uvicorn.access": {
                "handlers": ["stderr"],
                "level": quiet,
                "propagate": False,
            },
        },
    }
