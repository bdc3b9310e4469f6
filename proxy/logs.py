"""Structured JSON logs, one line an event, with nothing secret and no message content.

structlog renders with orjson straight to bytes on stdout; the access line is built
from the request context, never from the body or the headers.
"""

from __future__ import annotations

import logging
import sys

import orjson
import structlog

_configured = False


def configure(level: str = "info") -> None:
    global _configured
    if _configured:
        return
    _configured = True
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.BytesLoggerFactory(sys.stdout.buffer),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str = "lockgate") -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)
