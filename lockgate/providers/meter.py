"""Usage read off an answer's bytes as they pass, by its endpoint kind (providers/endpoints.py):
what a middleware mounted around an app that is not lockgate's proxy charges and counts,
and what the proxy records for the answers it passes through as they are (images,
audio). The readers themselves are in providers/usage.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from lockgate.providers.endpoints import KINDS, Files
from lockgate.providers.sse import SSEDecoder
from lockgate.providers.tokens import prompt_tokens
from lockgate.providers.usage import delta_chars, from_answer, stream_usage

MAX_JSON_BYTES = 32 * 1024 * 1024  # past this an answer is not read for usage (it is estimated)


def answer_usage(kind: str | None, data: Any, request: dict | None = None) -> dict | None:
    """The usage a whole answer of `kind` says, in the units it is billed by (the shape
    providers/prices.py prices); None when the answer does not say."""
    entry = KINDS.get(kind or "")
    request = request if isinstance(request, dict) else {}
    if entry is not None and entry.by_request:
        return entry.usage(None, request) if entry.usage is not None else None
    if not isinstance(data, dict):
        return None
    if entry is not None and entry.usage is not None:
        return entry.usage(data, request)
    return from_answer(data)


def usage_bound(kind: str | None, request: dict, size: int, files: Files = ()) -> dict | None:
    """The most a request of `kind` (its body `request`, `size` bytes, `files` as
    (field name, bytes)) can be billed, in units; None for kinds billed by tokens
    (providers/tokens.py bounds those)."""
    entry = KINDS.get(kind or "")
    return entry.bound(request, size, files) if entry is not None and entry.bound is not None else None


class UsageMeter:
    """Watches one answer go by: `start` with its response-start message, `feed` each
    body piece, then `usage` (what the answer said, or None) and `estimate`. `kind` is
    the endpoint kind's name and `request` its body, for the answers whose units the
    request says (speech, images)."""

    __slots__ = ("kind", "request", "streaming", "json", "parts", "size", "decoder", "found", "chars")

    def __init__(self, kind: str | None = None, request: Any = None) -> None:
        self.kind = KINDS.get(kind or "")
        self.request = request if isinstance(request, dict) else {}
        self.streaming = False
        self.json = False
        self.parts: list[bytes] = []
        self.size = 0
        self.decoder: SSEDecoder | None = None
        self.found: dict | None = None
        self.chars = 0

    def start(self, message: Mapping[str, Any]) -> None:  # the ASGI response start
        content_type = b""
        for name, value in message.get("headers", ()):
            if name.lower() == b"content-type":
                content_type = value.lower()
                break
        self.streaming = content_type.startswith(b"text/event-stream")
        self.json = not self.streaming and (b"json" in content_type or not content_type)
        if self.streaming:
            self.decoder = SSEDecoder()

    def feed(self, body: bytes) -> None:
        if not body:
            return
        if self.decoder is not None:
            for event, payload in self.decoder.feed(body):
                self._event(event, payload)
        elif (self.json or (self.kind is not None and self.kind.text_answer)) and self.size <= MAX_JSON_BYTES:
            self.size += len(body)
            self.parts.append(body)

    def _event(self, event: str, payload: bytes) -> None:
        if payload == b"[DONE]":
            return
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        self.chars += delta_chars(data)
        self.found = stream_usage(event, data, self.found)

    @property
    def usage(self) -> dict | None:
        name = self.kind.name if self.kind is not None else None
        if self.kind is not None and self.kind.by_request:
            return answer_usage(name, None, self.request)
        if self.decoder is not None:
            return self.found
        if self.parts and self.size <= MAX_JSON_BYTES:
            raw = b"".join(self.parts)
            self.parts = [raw]
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return None
            return answer_usage(name, data, self.request)
        return None

    def _transcript(self) -> str:
        """The text of a whole transcript answer (JSON's `text`, or plain text)."""
        raw = b"".join(self.parts)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw.decode("utf-8", "replace").strip()
        return data["text"] if isinstance(data, dict) and isinstance(data.get("text"), str) else ""

    def estimate(self, request: dict) -> dict:
        """Usage for an answer that reported none: the kind's units for it, else the
        prompt as estimated and the text that went by at four characters a token."""
        if self.kind is not None and self.kind.estimate is not None:
            text = self.chars + (len(self._transcript()) if self.kind.text_answer else 0)
            return self.kind.estimate(request, text)
        prompt = prompt_tokens(request)
        completion = (self.chars + 3) // 4
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion, "estimated": True}
