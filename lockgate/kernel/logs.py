"""Structured JSON logs, one line an event, with nothing secret and no message content.

structlog renders with orjson straight to bytes; the access line is built from the
request context, never from the body or the headers, and skips structlog's processor
chain (it is one line a request, so its microseconds count) while writing the same shape.

Lines go to stdout through `LineSink`: inside an event loop, every line of one turn of
the loop goes out in one write at the end of that turn (under load, one syscall serves
many requests; alone, a line waits microseconds). Writes are cut at line boundaries into
pieces of at most PIPE_BUF bytes, which a pipe never interleaves with another worker's.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime as dt
import logging
import os
import select
import sys
from typing import Any

import orjson
import structlog

_configured = False
_min_level = logging.INFO
UTC = dt.UTC
PIPE_BUF = getattr(select, "PIPE_BUF", 4096)


class LineSink:
    """stdout for log lines, written once per event-loop turn (structlog's logger protocol)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lines: list[bytes] = []
        self.scheduled = False

    def msg(self, line: bytes) -> None:
        self.lines.append(line + b"\n")
        if self.scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()  # no loop (the CLI, start-up): at once
            return
        self.scheduled = True
        loop.call_soon(self.flush)

    debug = info = warning = warn = error = err = critical = fatal = exception = failure = log = msg

    def flush(self) -> None:
        self.scheduled = False
        lines, self.lines = self.lines, []
        piece: list[bytes] = []
        size = 0
        for line in lines:
            if piece and size + len(line) > PIPE_BUF:
                self._write(b"".join(piece))
                piece, size = [], 0
            piece.append(line)
            size += len(line)
        if piece:
            self._write(b"".join(piece))

    def _write(self, data: bytes) -> None:
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:
            pass  # stdout closed or full: a log line is never worth failing a request


_sink = LineSink(1)  # the stdout file descriptor, whatever sys.stdout is
atexit.register(_sink.flush)


def configure(level: str = "info") -> None:
    global _configured, _min_level
    if _configured:
        return
    _configured = True
    _min_level = logging.getLevelName(level.upper())
    sys.stdout.flush()  # anything printed before goes out first
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_min_level),
        logger_factory=lambda *args: _sink,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str = "lockgate") -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)  # what `configure` makes it
    return logger


def info_line(event: str, fields: dict[str, Any]) -> None:
    """`get_logger().info(event, **fields)`, the same line, without structlog's processors."""
    if _min_level > logging.INFO:
        return
    fields["event"] = event
    fields["level"] = "info"
    fields["timestamp"] = dt.datetime.now(UTC)
    _sink.msg(orjson.dumps(fields, option=orjson.OPT_UTC_Z))
