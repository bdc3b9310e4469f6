"""Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`) for
deployments that do not speak it: a Messages request becomes a chat-completions request
for the provider's chat adapter, and its `chat.completion` (or stream of chunks) becomes
a Message (or Anthropic's event stream) again. Anthropic deployments and Claude on
Vertex take `/v1/messages` natively; nothing here touches those.

Choices where the two formats do not line up:
- `system` (a string or text blocks) becomes one system message, its blocks' texts
  joined by blank lines. `cache_control` markers are dropped: the providers behind the
  chat translation cache prompts on their own terms.
- A user turn's `tool_result` blocks become `tool` messages, in order, before the rest
  of the turn (OpenAI wants them right after the assistant's calls). A tool result's
  images cannot go in a tool message: they follow in a user message. `is_error` has
  no equivalent and is dropped.
- Images (base64 or URL) become `image_url` parts (a data URL for base64); PDF
  documents become `file` parts; a plain-text document becomes its text.
- Assistant `thinking` and `redacted_thinking` blocks are dropped from the history
  (their signatures mean nothing to another provider); a model's `reasoning_content`
  comes back as a `thinking` block with an empty signature.
- `tool_choice` any is `required`, tool is a named function, none is `none`;
  `disable_parallel_tool_use` is `parallel_tool_calls: false`. Anthropic's server
  tools (web search, code execution...) cannot be run by another provider: refused.
- `stop_sequences` is `stop`, `metadata.user_id` is `user`; `top_k`, `thinking`,
  `service_tier` and other Anthropic-only fields are dropped.
- Structured outputs (`output_config.format`, or the older top-level `output_format`)
  become `response_format` json_schema, named `output`; strict (constrained decoding
  at OpenAI) only when the schema meets OpenAI's strict rules (every object closed with
  `additionalProperties: false` and every property required), as Anthropic's SDKs'
  schemas do, since OpenAI refuses a strict schema that does not.
- `stop_reason` from `finish_reason`: stop is end_turn, length is max_tokens,
  tool_calls is tool_use, content_filter is refusal. Which stop sequence ended the
  answer is not reported by chat, so `stop_sequence` is always null.
- Usage: `input_tokens` excludes cached reads and cache writes, as Anthropic counts.
  A stream's `message_start` carries the input estimated (chat reports usage only at
  the end); its `message_delta` carries the real counts, input included, which the SDK
  takes over (Anthropic's own message_delta usage is cumulative too).
- Errors come in Anthropic's shape, `{"type": "error", "error": {"type", "message"}}`,
  the type chosen by status; in a stream, an `error` event.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from lockgate.providers import shapes
from lockgate.providers.base import UnsupportedRequest, loads_or_none, text_of
from lockgate.providers.sse import encode_event
from lockgate.providers.tokens import prompt_tokens, text_tokens

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use", "content_filter": "refusal"}
TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


# -- request: Messages -> chat ------------------------------------------------------------


def to_chat(body: dict) -> dict:
    """A Messages request as a chat-completions request."""
    messages: list[dict] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": system if isinstance(system, str) else "\n\n".join(blocks_text(system))})
    for i, message in enumerate(shapes.objects(body.get("messages"), "messages")):
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant"):
            raise UnsupportedRequest(f"messages[{i}].role must be user or assistant", f"messages[{i}].role")
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
        elif role == "user":
            messages.extend(user_messages(shapes.objects(content, f"messages[{i}].content")))
        else:
            messages.append(assistant_message(shapes.objects(content, f"messages[{i}].content")))
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    if body.get("max_tokens") is not None:
        chat["max_tokens"] = body["max_tokens"]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("stop_sequences"):
        chat["stop"] = shapes.array(body["stop_sequences"], "stop_sequences")
    user = shapes.mapping(body.get("metadata"), "metadata").get("user_id")
    if user:
        chat["user"] = str(user)
    chat.update(chat_tools(body))
    response_format = chat_response_format(body)
    if response_format:
        chat["response_format"] = response_format
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def chat_response_format(body: dict) -> dict | None:
    config = body.get("output_config")
    fmt = (config.get("format") if isinstance(config, dict) else None) or body.get("output_format")
    if not fmt:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise UnsupportedRequest("output_config.format must be {\"type\": \"json_schema\", \"schema\": {...}}", "output_config.format")
    schema = fmt["schema"]
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": strict_compatible(schema)}}


def strict_compatible(schema: Any) -> bool:
    """Whether OpenAI accepts `schema` as strict: every object in it closed and wholly required."""
    if not isinstance(schema, dict):
        return True
    properties = schema.get("properties")
    if isinstance(properties, dict) or schema.get("type") == "object":
        properties = properties if isinstance(properties, dict) else {}
        required = schema.get("required") or []
        if schema.get("additionalProperties") is not False or not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            return False
        if set(required) != set(properties):
            return False
    return all(map(strict_compatible, subschemas(schema)))


def subschemas(schema: dict) -> list:
    found = list((schema.get("properties") or {}).values()) if isinstance(schema.get("properties"), dict) else []
    for defs in ("$defs", "definitions"):
        if isinstance(schema.get(defs), dict):
            found.extend(schema[defs].values())
    for variants in ("anyOf", "oneOf", "allOf", "prefixItems"):
        if isinstance(schema.get(variants), list):
            found.extend(schema[variants])
    items = schema.get("items")
    found.extend(items if isinstance(items, list) else [items])
    return found


def blocks_text(blocks: Any) -> list[str]:
    if not isinstance(blocks, list):
        raise UnsupportedRequest("`system` must be a string or an array of text blocks", "system")
    return [shapes.string(b.get("text"), "system.text") for b in blocks if isinstance(b, dict) and b.get("type") == "text"]


def user_messages(blocks: list) -> list[dict]:
    tools: list[dict] = []
    parts: list[dict] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "tool_result":
            text, images = tool_result_content(block.get("content"))
            tools.append({"role": "tool", "tool_call_id": block.get("tool_use_id") or "", "content": text})
            parts.extend(images)
        else:
            parts.append(user_part(block))
    return tools + ([{"role": "user", "content": parts}] if parts else [])


def user_part(block: dict) -> dict:
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": shapes.string(block.get("text"), "messages.content.text")}
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": source_url(shapes.mapping(block.get("source"), "messages.content.source"))}}
    if kind == "document":
        source = shapes.mapping(block.get("source"), "messages.content.source")
        if source.get("type") == "text":
            return {"type": "text", "text": source.get("data") or ""}
        if source.get("type") == "base64" and source.get("media_type") == "application/pdf":
            return {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{source.get('data') or ''}",
                                             "filename": block.get("title") or "document.pdf"}}
        raise UnsupportedRequest("documents are sent to this model only as base64 PDF or plain text", "messages")
    raise UnsupportedRequest(f"content blocks of type {kind!r} cannot be sent to this model", "messages")


def source_url(source: dict) -> str:
    if source.get("type") == "url":
        return str(source.get("url") or "")
    if source.get("type") == "base64":
        return f"data:{source.get('media_type') or 'image/png'};base64,{source.get('data') or ''}"
    raise UnsupportedRequest("images are sent as base64 or url sources", "messages")


def tool_result_content(content: Any) -> tuple[str, list[dict]]:
    if content is None or isinstance(content, str):
        return content or "", []
    texts, images = [], []
    for block in shapes.objects(content, "messages.content.content"):
        if block.get("type") == "image":
            images.append(user_part(block))
        elif block.get("type") == "text":
            texts.append(shapes.string(block.get("text"), "messages.content.text"))
    return "\n".join(texts), images


def assistant_message(blocks: list) -> dict:
    texts: list[str] = []
    calls: list[dict] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            texts.append(shapes.string(block.get("text"), "messages.content.text"))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") if block.get("input") is not None else {}).decode()
            function = {"name": shapes.string(block.get("name"), "messages.content.name"), "arguments": arguments}
            calls.append({"id": shapes.string(block.get("id"), "messages.content.id"), "type": "function", "function": function})
        elif kind not in ("thinking", "redacted_thinking"):
            raise UnsupportedRequest(f"assistant content blocks of type {kind!r} cannot be sent to this model", "messages")
    message: dict = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def chat_tools(body: dict) -> dict:
    tools = shapes.objects(body.get("tools"), "tools")
    if not tools:
        return {}
    out: dict[str, Any] = {"tools": [chat_tool(t) for t in tools]}
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = shapes.string(choice.get("type"), "tool_choice.type")
        if kind == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": shapes.string(choice.get("name"), "tool_choice.name")}}
        elif kind in TOOL_CHOICES:
            out["tool_choice"] = TOOL_CHOICES[kind]
        if choice.get("disable_parallel_tool_use") and kind != "none":
            out["parallel_tool_calls"] = False
    return out


def chat_tool(tool: dict) -> dict:
    if tool.get("type") not in (None, "custom") or "input_schema" not in tool:
        raise UnsupportedRequest(f"tool {tool.get('name')!r} is one of Anthropic's server tools, which only Anthropic can run", "tools")
    function: dict = {"name": shapes.string(tool.get("name"), "tools.name"), "parameters": tool.get("input_schema") or {"type": "object", "properties": {}}}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def count_tokens(body: dict) -> int:
    """lockgate's own count of a Messages request's input (providers/tokens.py's estimate
    over its chat translation, tool calls' arguments and tool definitions included)."""
    chat = to_chat({**body, "stream": False})
    calls = [c["function"]["arguments"] for m in chat["messages"] for c in m.get("tool_calls") or ()]
    return prompt_tokens(chat) + sum(map(text_tokens, calls))


# -- answers: chat -> Message --------------------------------------------------------------


def new_id() -> str:
    return "msg_" + secrets.token_hex(12)


def message_id(chat_id: Any) -> str:
    """Anthropic's `msg_` id, keeping the chat id's tail so the two can be matched."""
    return "msg_" + str(chat_id).removeprefix("chatcmpl-") if chat_id else new_id()


def usage_from_chat(usage: Any) -> dict:
    usage = shapes.part(usage)
    details = shapes.part(usage.get("prompt_tokens_details"))
    cached = shapes.count(details.get("cached_tokens"))
    written = shapes.count(details.get("cache_write_tokens"))
    return {
        "input_tokens": max(0, shapes.count(usage.get("prompt_tokens")) - cached - written),
        "output_tokens": shapes.count(usage.get("completion_tokens")),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
    }


def tool_input(arguments: Any) -> dict:
    parsed = loads_or_none(shapes.string(arguments, "function.arguments") or "{}")
    return parsed if isinstance(parsed, dict) else {}


def from_chat(chat: dict, request: dict) -> dict:
    choice, message = shapes.first_choice(chat)
    content: list[dict] = []
    reasoning = shapes.string(message.get("reasoning_content"), "message.reasoning_content")
    if reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = text_of(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    for call in shapes.objects(message.get("tool_calls"), "message.tool_calls"):
        function = shapes.mapping(call.get("function"), "tool_calls.function")
        name = shapes.string(function.get("name"), "function.name")
        content.append({"type": "tool_use", "id": shapes.string(call.get("id"), "tool_calls.id"), "name": name, "input": tool_input(function.get("arguments"))})
    return {
        "id": message_id(chat.get("id")),
        "type": "message",
        "role": "assistant",
        "model": request.get("model") or chat.get("model") or "",
        "content": content,
        "stop_reason": STOP_REASONS.get(shapes.string(choice.get("finish_reason"), "finish_reason"), "end_turn"),
        "stop_sequence": None,
        "usage": usage_from_chat(chat.get("usage")),
    }


def error_body(status: int, openai_error: dict) -> dict:
    """An OpenAI-shaped error (`{"error": {"message", ...}}`) in Anthropic's shape."""
    message = str((openai_error.get("error") or {}).get("message") or f"request failed with status {status}")
    kind = ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


# -- streams: chat chunks -> Anthropic events --------------------------------------------


class MessagesStream:
    """Turns a chat adapter's `chat.completion.chunk` dicts into Anthropic's event
    sequence: message_start, ping, each content block (start, deltas, stop; one open
    at a time, as Anthropic sends them), message_delta, message_stop."""

    def __init__(self, request: dict) -> None:
        self._request = request
        self._id = new_id()
        self._started = False
        self._done = False
        self._index = -1
        self._open: str | None = None  # "text", "thinking" or "tool:<chat index>"
        self._tools_opened: set[int] = set()
        self._stop_reason: str | None = None
        self._usage: dict | None = None

    def feed(self, chunk: dict) -> list[bytes]:
        if self._done:
            return []
        events = self._start(chunk.get("id"))
        if "error" in chunk:
            self._done = True
            error = chunk["error"] if isinstance(chunk["error"], dict) else {}
            return events + [encode_event("error", {"type": "error", "error": {"type": "api_error", "message": str(error.get("message") or "upstream error")}})]
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in shapes.objects(chunk.get("choices"), "choices")[:1]:
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                events += self._delta("thinking", {"type": "thinking", "thinking": "", "signature": ""},
                                      {"type": "thinking_delta", "thinking": delta["reasoning_content"]})
            if delta.get("content"):
                events += self._delta("text", {"type": "text", "text": ""}, {"type": "text_delta", "text": delta["content"]})
            for call in delta.get("tool_calls") or []:
                events += self._tool(call)
            if choice.get("finish_reason"):
                self._stop_reason = STOP_REASONS.get(choice["finish_reason"], "end_turn")
        return events

    def finish(self, usage: dict | None) -> list[bytes]:
        if self._done:
            return []
        self._done = True
        events = self._start(None) + self._close()
        counts = usage_from_chat(usage or self._usage)
        delta = {"stop_reason": self._stop_reason or "end_turn", "stop_sequence": None}
        events.append(encode_event("message_delta", {"type": "message_delta", "delta": delta, "usage": counts}))
        events.append(encode_event("message_stop", {"type": "message_stop"}))
        return events

    def _start(self, chat_id: Any) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        if chat_id:
            self._id = message_id(chat_id)
        usage = {"input_tokens": prompt_tokens(to_chat(self._request)), "output_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._request.get("model") or "",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        return [encode_event("message_start", {"type": "message_start", "message": message}), encode_event("ping", {"type": "ping"})]

    def _open_block(self, name: str, block: dict) -> list[bytes]:
        events = self._close()
        self._index += 1
        self._open = name
        return events + [encode_event("content_block_start", {"type": "content_block_start", "index": self._index, "content_block": block})]

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open = None
        return [encode_event("content_block_stop", {"type": "content_block_stop", "index": self._index})]

    def _delta(self, name: str, block: dict, delta: dict) -> list[bytes]:
        events = self._open_block(name, block) if self._open != name else []
        return events + [encode_event("content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta})]

    def _tool(self, call: dict) -> list[bytes]:
        position = call.get("index", 0)
        name = f"tool:{position}"
        function = call.get("function") or {}
        events: list[bytes] = []
        if self._open != name:
            if position in self._tools_opened:
                return []  # a late fragment of a call already closed: Anthropic cannot reopen a block
            self._tools_opened.add(position)
            block: dict[str, Any] = {"type": "tool_use", "id": call.get("id") or "toolu_" + secrets.token_hex(12),
                                     "name": function.get("name") or "", "input": {}}
            events = self._open_block(name, block)
        if function.get("arguments"):
            delta = {"type": "input_json_delta", "partial_json": function["arguments"]}
            events.append(encode_event("content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta}))
        return events
