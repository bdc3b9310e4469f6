"""What the dialect translations share: an OpenAI chat answer read back, whole or chunk
by chunk (tool calls arrive in pieces; most dialects send each one whole)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lockgate.providers import shapes
from lockgate.providers.base import TranslationError, loads_or_none, text_of


@dataclass(slots=True)
class ToolCall:
    id: str = ""
    name: str = ""
    arguments: str = ""

    def args(self) -> dict:
        parsed = loads_or_none(self.arguments or "{}")
        return parsed if isinstance(parsed, dict) else {}


@dataclass(slots=True)
class Answer:
    """A chat answer's first choice as the dialects need it."""

    text: str = ""
    reasoning: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    finish: str = "stop"
    id: str = ""
    usage: dict = field(default_factory=dict)


def read_chat(chat: Any) -> Answer:
    """A whole `chat.completion` (first choice) as an Answer."""
    if not isinstance(chat, dict):
        raise TranslationError("the answer is not a chat completion")
    choice, message = shapes.first_choice(chat)
    return read_choice(chat, choice, message)


def read_choices(chat: Any) -> list[Answer]:
    """Every choice of a whole `chat.completion` (n > 1), in order."""
    if not isinstance(chat, dict):
        raise TranslationError("the answer is not a chat completion")
    choices = shapes.objects(chat.get("choices"), "choices")
    answers = [read_choice(chat, choice, shapes.mapping(choice.get("message"), "choices.message")) for choice in choices]
    return answers or [read_chat(chat)]


def read_choice(chat: dict, choice: dict, message: dict) -> Answer:
    calls = []
    for call in shapes.objects(message.get("tool_calls"), "message.tool_calls"):
        function = shapes.mapping(call.get("function"), "tool_calls.function")
        arguments = function.get("arguments")
        calls.append(ToolCall(shapes.string(call.get("id"), "tool_calls.id"), shapes.string(function.get("name"), "function.name"),
                              arguments if isinstance(arguments, str) else "{}"))
    return Answer(
        text=text_of(message.get("content")),
        reasoning=shapes.string(message.get("reasoning_content"), "message.reasoning_content"),
        calls=calls,
        finish=shapes.string(choice.get("finish_reason"), "finish_reason") or "stop",
        id=shapes.string(chat.get("id"), "id"),
        usage=shapes.mapping(chat.get("usage"), "usage"),
    )


class ChunkReader:
    """Chat chunks read one at a time: the text and reasoning each carries (returned by
    `feed`), tool calls gathered whole by their index, the finish reason and the usage."""

    __slots__ = ("calls", "finish", "usage", "id", "model")

    def __init__(self) -> None:
        self.calls: dict[int, ToolCall] = {}
        self.finish: str | None = None
        self.usage: dict | None = None
        self.id = ""
        self.model = ""

    def feed(self, chunk: dict) -> tuple[str, str, list[int]]:
        """(text, reasoning, indexes of tool calls started by this chunk)."""
        self.id = self.id or shapes.string(chunk.get("id"), "id")
        self.model = self.model or shapes.string(chunk.get("model"), "model")
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        text = reasoning = ""
        started: list[int] = []
        for choice in shapes.objects(chunk.get("choices"), "choices"):
            if choice.get("index", 0) != 0:
                continue
            delta = shapes.mapping(choice.get("delta"), "choices.delta")
            text += shapes.string(delta.get("content"), "delta.content")
            reasoning += shapes.string(delta.get("reasoning_content"), "delta.reasoning_content")
            for call in shapes.objects(delta.get("tool_calls"), "delta.tool_calls"):
                index = call.get("index", len(self.calls))
                if not isinstance(index, int):
                    raise TranslationError("a tool call's `index` must be an integer", "delta.tool_calls.index")
                if index not in self.calls:
                    self.calls[index] = ToolCall()
                    started.append(index)
                known = self.calls[index]
                function = shapes.mapping(call.get("function"), "tool_calls.function")
                known.id = known.id or shapes.string(call.get("id"), "tool_calls.id")
                known.name = known.name or shapes.string(function.get("name"), "function.name")
                known.arguments += shapes.string(function.get("arguments"), "function.arguments")
            if choice.get("finish_reason"):
                self.finish = shapes.string(choice["finish_reason"], "finish_reason")
        return text, reasoning, started


def tokens(usage: dict | None) -> tuple[int, int, int]:
    """(input, output, cached input) of an OpenAI usage."""
    usage = usage or {}
    details = shapes.part(usage.get("prompt_tokens_details"))
    return int(shapes.count(usage.get("prompt_tokens"))), int(shapes.count(usage.get("completion_tokens"))), int(shapes.count(details.get("cached_tokens")))


def error_message(status: int, body: Any) -> str:
    """The message of an error answer in OpenAI's (or Anthropic's) shape."""
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) and message else f"request failed with status {status}"


def json_schema(schema: Any) -> Any:
    """A Gemini/OpenAPI-style schema (`type: OBJECT`) as JSON Schema (`type: object`)."""
    if isinstance(schema, list):
        return [json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            out[key] = value.lower()
        elif key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            out[key] = {name: json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "anyOf", "oneOf", "allOf", "not", "additionalProperties"):
            out[key] = json_schema(value)
        elif key == "nullable":
            continue
        else:
            out[key] = value
    if schema.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out
