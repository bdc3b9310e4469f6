"""Usage read off an answer's bytes as they pass: what a middleware mounted around an app
that is not lockgate's proxy (a FastAPI route calling a model, a vLLM server, another
proxy) charges and counts. lockgate's own proxy records usage in the request context;
this is for when nothing did.

What is read, in OpenAI's usage shape (`prompt_tokens`, `completion_tokens`, details):
- a JSON answer's `usage`: chat, completions, embeddings as they are; an Anthropic
  message's and a Response's `input_tokens` / `output_tokens` converted;
- an OpenAI SSE stream's usage chunk (sent when the client asked for
  `stream_options.include_usage`);
- Anthropic's `message_start` and `message_delta` events (input, cache reads and
  writes, then the cumulative output);
- the Responses API's `response.completed` / `response.incomplete` event.
The text streamed is counted as it passes too, so an answer that carries no usage can
still be estimated (`estimate`) instead of charged nothing.
"""

from __future__ import annotations

from typing import Any

import orjson

from lockgate.providers.anthropic import merge_usage, usage_from_openai, usage_to_openai
from lockgate.providers.responses import TERMINAL_EVENTS, usage_to_chat
from lockgate.providers.sse import SSEDecoder
from lockgate.providers.tokens import prompt_tokens

MAX_JSON_BYTES = 32 * 1024 * 1024  # past this an answer is not read for usage (it is estimated)


def from_answer(data: Any) -> dict | None:
    """OpenAI-shaped usage of a whole (non-streamed) answer, if it says."""
    if not isinstance(data, dict):
        return None
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return None
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        return usage if _counts_are_numbers(usage) else None
    if data.get("object") == "response":
        return usage_to_chat(usage)
    if "input_tokens" in usage or "output_tokens" in usage:
        return usage_to_openai(usage)
    return None


def _counts_are_numbers(usage: dict) -> bool:
    return all(isinstance(usage.get(k, 0), (int, float)) and not isinstance(usage.get(k, 0), bool) for k in ("prompt_tokens", "completion_tokens"))


def delta_chars(event: Any) -> int:
    """Characters of generated text in one stream event (OpenAI chunk, Anthropic or
    Responses event); anything malformed counts nothing."""
    if not isinstance(event, dict):
        return 0
    total = 0
    choices = event.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            total += _text_len(delta.get("content"))
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    function = call.get("function") if isinstance(call, dict) else None
                    if isinstance(function, dict):
                        total += _text_len(function.get("arguments"))
    delta = event.get("delta")
    if isinstance(delta, str):
        total += len(delta)
    elif isinstance(delta, dict):
        total += _text_len(delta.get("text")) + _text_len(delta.get("partial_json")) + _text_len(delta.get("thinking"))
    return total


def _text_len(value: Any) -> int:
    return len(value) if isinstance(value, str) else 0


def stream_usage(event: str, data: Any, usage: dict | None) -> dict | None:
    """Usage so far, updated by one stream event of any of the formats above."""
    if not isinstance(data, dict):
        return usage
    kind = data.get("type") or event
    if kind == "message_start":
        message = data.get("message")
        found = message.get("usage") if isinstance(message, dict) else None
        return usage_to_openai(found) if isinstance(found, dict) else usage
    if kind == "message_delta":
        update = data.get("usage")
        return usage_to_openai(merge_usage(usage_from_openai(usage), update)) if isinstance(update, dict) else usage
    if kind in TERMINAL_EVENTS:
        response = data.get("response")
        found = response.get("usage") if isinstance(response, dict) else None
        return (usage_to_chat(found) if isinstance(found, dict) else None) or usage
    found = data.get("usage")
    if isinstance(found, dict) and ("prompt_tokens" in found or "completion_tokens" in found) and _counts_are_numbers(found):
        return found
    return usage


class UsageMeter:
    """Watches one answer go by: `start` with its response-start message, `feed` each
    body piece, then `usage` (what the answer said, or None) and `estimate`."""

    __slots__ = ("streaming", "json", "parts", "size", "decoder", "found", "chars")

    def __init__(self) -> None:
        self.streaming = False
        self.json = False
        self.parts: list[bytes] = []
        self.size = 0
        self.decoder: SSEDecoder | None = None
        self.found: dict | None = None
        self.chars = 0

    def start(self, message: dict) -> None:
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
        elif self.json and self.size <= MAX_JSON_BYTES:
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
        if self.decoder is not None:
            return self.found
        if self.parts and self.size <= MAX_JSON_BYTES:
            raw = b"".join(self.parts)
            self.parts = [raw]
            try:
                return from_answer(orjson.loads(raw))
            except orjson.JSONDecodeError:
                return None
        return None

    def estimate(self, request: dict) -> dict:
        """Usage for an answer that reported none: the prompt as estimated, the text that
        went by at four characters a token."""
        prompt = prompt_tokens(request)
        completion = (self.chars + 3) // 4
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion, "estimated": True}
