"""Server-sent events: an incremental decoder and the encoders the proxy writes with."""

from __future__ import annotations

import orjson

from lockgate.providers.base import TranslationError

MAX_EVENT_BYTES = 16 * 1024 * 1024  # one event (or one unfinished line) past this is not an LLM stream


class SSEError(TranslationError):
    """The bytes are not a usable event stream (an event larger than MAX_EVENT_BYTES)."""


class SSEDecoder:
    """Splits a byte stream into (event, data) pairs, whatever the chunk boundaries.

    Follows the WHATWG event-stream rules that matter for LLM APIs: events end at a
    blank line, `data:` lines join with newlines, comments and `id:`/`retry:` are ignored,
    and CRLF, CR or LF all end a line. A `strict` decoder takes no other line (the rules
    ignore them, but a provider that writes only `data:` lines sends none unless
    something broke): it stops there and sets `error`, after the events before it.
    """

    __slots__ = ("_buffer", "_event", "_data", "_size", "_strict", "error")

    def __init__(self, strict: bool = False) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[bytes] = []
        self._size = 0  # bytes of the event being read
        self._strict = strict
        self.error: SSEError | None = None

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        if self.error is not None:
            return []
        buffer = self._buffer + data if self._buffer else data
        held = b""
        if buffer.endswith(b"\r"):
            # a trailing CR may be the first half of a CRLF still in flight
            buffer, held = buffer[:-1], b"\r"
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events: list[tuple[str, bytes]] = []
        start = 0
        while self.error is None:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            self._line(buffer[start:end], events)
            start = end + 1
        self._buffer = buffer[start:] + held
        if len(self._buffer) + self._size > MAX_EVENT_BYTES:
            raise SSEError(f"a stream event is larger than {MAX_EVENT_BYTES} bytes")
        return events

    def finish(self) -> list[tuple[str, bytes]]:
        events: list[tuple[str, bytes]] = []
        if self.error is not None:
            return events
        if self._buffer:
            self._line(self._buffer.rstrip(b"\r"), events)
            self._buffer = b""
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[tuple[str, bytes]]) -> None:
        if not line:
            if self._data:
                events.append((self._event or "message", b"\n".join(self._data)))
            self._event = ""
            self._data = []
            self._size = 0
            return
        if line[:1] == b":":
            return
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
            self._size += len(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif self._strict and name not in (b"id", b"retry"):
            self.error = SSEError("a line in the stream that is not part of an event")


DONE = b"data: [DONE]\n\n"


def encode_data(payload: dict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def encode_event(event: str, payload: dict) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def encode_raw(event: str, data: bytes) -> bytes:
    """A decoded event (SSEDecoder's name and data) framed again: the same event to any reader."""
    if b"\n" in data:
        data = data.replace(b"\n", b"\ndata: ")
    if event == "message":
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"
