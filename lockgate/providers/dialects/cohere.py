"""Cohere's v2 API as a client dialect (`cohere.ClientV2(base_url=...)`): `/v2/chat`
(whole and streamed, tools), `/v2/embed`; `/v2/rerank` is lockgate's rerank endpoint
itself, which takes Cohere's shape already (providers/endpoints.py).

Choices:
- Messages are nearly OpenAI's: content parts of `text` and `image_url` pass as they
  are, a `document` part of a tool result becomes its JSON text, `tool_plan` is dropped
  (the model writes a new one); a model's reasoning is not sent. `documents` (Cohere's grounded generation) has no chat
  equivalent and is refused, as is `citation_options`.
- `p` is `top_p`; `k` has no chat equivalent and is dropped; `tool_choice` `REQUIRED` /
  `NONE` are `required` / `none`; `response_format` `json_object` with a `json_schema`
  is a `json_schema` response format.
- `finish_reason`: `COMPLETE`, `MAX_TOKENS`, `TOOL_CALL`, `STOP_SEQUENCE` is not told
  apart from `COMPLETE` (chat says `stop` for both). `usage.billed_units` and
  `usage.tokens` both hold the chat usage.
- A stream is Cohere's typed events: message-start, content-start/-delta/-end,
  tool-call-start/-delta/-end (arguments as they come), message-end with the usage.
- Embeddings: `texts` (or the text items of `inputs`); only `float` embeddings
  (`embedding_types` other than `float` are refused); `output_dimension` is
  `dimensions`; `input_type` is not passed on (an OpenAI-shaped upstream refuses it).
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from lockgate.providers import shapes
from lockgate.providers.base import TranslationError, UnsupportedRequest
from lockgate.providers.dialects.common import ChunkReader, error_message, read_chat, tokens
from lockgate.providers.sse import encode_event

FINISH = {"stop": "COMPLETE", "length": "MAX_TOKENS", "tool_calls": "TOOL_CALL", "function_call": "TOOL_CALL", "content_filter": "ERROR"}
SAMPLING = (("temperature", "temperature"), ("p", "top_p"), ("seed", "seed"), ("max_tokens", "max_tokens"),
            ("frequency_penalty", "frequency_penalty"), ("presence_penalty", "presence_penalty"))


# -- requests -------------------------------------------------------------------------------


def content(value: Any, where: str, parts_allowed: bool) -> str | list[dict]:
    if isinstance(value, str) or value is None:
        return value or ""
    items: list[dict] = []
    for i, part in enumerate(shapes.objects(value, where)):
        kind = part.get("type")
        if kind == "text":
            items.append({"type": "text", "text": shapes.string(part.get("text"), f"{where}[{i}].text")})
        elif kind == "image_url" and parts_allowed:
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            items.append({"type": "image_url", "image_url": {"url": shapes.name(url, f"{where}[{i}].image_url.url")}})
        elif kind == "document":
            document = shapes.mapping(part.get("document"), f"{where}[{i}].document")
            data = document.get("data", document)
            items.append({"type": "text", "text": data if isinstance(data, str) else orjson.dumps(data).decode()})
        else:
            raise UnsupportedRequest(f"`{where}[{i}]` is a content part lockgate cannot translate", f"{where}[{i}]")
    if all(item["type"] == "text" for item in items):
        return "".join(item["text"] for item in items)
    return items


def to_chat(body: dict, stream: bool) -> dict:
    """A v2 chat request as an OpenAI chat request."""
    for field in ("documents", "citation_options"):
        if body.get(field):
            raise UnsupportedRequest(f"`{field}` (grounded generation) is not served through lockgate's translation", field)
    messages = []
    for i, message in enumerate(shapes.objects(body.get("messages"), "messages")):
        where = f"messages[{i}]"
        role = shapes.string(message.get("role"), where + ".role")
        if role not in ("system", "user", "assistant", "tool"):
            raise TranslationError(f"`{where}.role` must be system, user, assistant or tool", where + ".role")
        out: dict = {"role": role, "content": content(message.get("content"), where + ".content", role == "user")}
        if role == "assistant":
            calls = []
            for call in shapes.objects(message.get("tool_calls"), where + ".tool_calls"):
                function = shapes.mapping(call.get("function"), where + ".tool_calls.function")
                arguments = function.get("arguments")
                calls.append({
                    "id": shapes.name(call.get("id"), where + ".tool_calls.id"), "type": "function",
                    "function": {"name": shapes.name(function.get("name"), where + ".tool_calls.function.name"),
                                 "arguments": arguments if isinstance(arguments, str) else orjson.dumps(arguments or {}).decode()},
                })
            if calls:
                out["tool_calls"] = calls
                out["content"] = out["content"] or None
        if role == "tool":
            out["tool_call_id"] = shapes.name(message.get("tool_call_id"), where + ".tool_call_id")
        messages.append(out)
    chat: dict = {"model": body["model"], "messages": messages}
    for source, target in SAMPLING:
        if body.get(source) is not None:
            chat[target] = body[source]
    if body.get("stop_sequences"):
        chat["stop"] = shapes.array(body["stop_sequences"], "stop_sequences")
    tools = []
    for i, tool in enumerate(shapes.objects(body.get("tools"), "tools")):
        function = shapes.mapping(tool.get("function"), f"tools[{i}].function")
        spec: dict = {"name": shapes.name(function.get("name"), f"tools[{i}].function.name"),
                      "parameters": function.get("parameters") or {"type": "object", "properties": {}}}
        if function.get("description"):
            spec["description"] = function["description"]
        tools.append({"type": "function", "function": spec})
    if tools:
        chat["tools"] = tools
        choice = shapes.string(body.get("tool_choice"), "tool_choice").upper()
        if choice in ("REQUIRED", "NONE"):
            chat["tool_choice"] = choice.lower()
    response_format = shapes.mapping(body.get("response_format"), "response_format")
    if response_format.get("type") == "json_object":
        schema = response_format.get("json_schema") or response_format.get("schema")
        chat["response_format"] = {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}} if schema else {"type": "json_object"}
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def embed_request(body: dict) -> dict:
    texts = shapes.array(body.get("texts"), "texts")
    if not texts and body.get("inputs"):
        for i, item in enumerate(shapes.objects(body.get("inputs"), "inputs")):
            parts = shapes.objects(item.get("content"), f"inputs[{i}].content")
            if any(part.get("type") != "text" for part in parts):
                raise UnsupportedRequest("only text inputs are embedded through lockgate's translation", f"inputs[{i}]")
            texts.append("".join(shapes.string(part.get("text"), f"inputs[{i}].content.text") for part in parts))
    if not texts or not all(isinstance(text, str) for text in texts):
        raise TranslationError("`texts` must be a non-empty array of strings", "texts")
    kinds = shapes.array(body.get("embedding_types"), "embedding_types") or ["float"]
    if kinds != ["float"]:
        raise UnsupportedRequest("only `float` embeddings are served through lockgate's translation", "embedding_types")
    out: dict = {"model": body["model"], "input": texts}
    if body.get("output_dimension") is not None:
        out["dimensions"] = body["output_dimension"]
    return out


# -- answers --------------------------------------------------------------------------------


def usage(chat_usage: dict | None) -> dict:
    prompt, completion, _ = tokens(chat_usage)
    counts = {"input_tokens": prompt, "output_tokens": completion}
    return {"billed_units": counts, "tokens": dict(counts)}


def tool_call(call: Any) -> dict:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments or "{}"}}


def message_id(chat_id: str) -> str:
    return chat_id.removeprefix("chatcmpl-") or str(uuid.uuid4())


def from_chat(chat: Any) -> dict:
    answer = read_chat(chat)
    message: dict = {"role": "assistant"}
    if answer.text:
        message["content"] = [{"type": "text", "text": answer.text}]
    if answer.calls:
        message["tool_calls"] = [tool_call(call) for call in answer.calls]
    return {"id": message_id(answer.id), "finish_reason": FINISH.get(answer.finish, "COMPLETE"), "message": message, "usage": usage(answer.usage)}


def embed_answer(data: Any, request: dict) -> dict:
    answer = shapes.mapping(data, "answer")
    items = sorted(shapes.objects(answer.get("data"), "data"), key=lambda item: item.get("index", 0))
    prompt, _, _ = tokens(shapes.mapping(answer.get("usage"), "usage"))
    return {
        "id": str(uuid.uuid4()), "embeddings": {"float": [shapes.array(item.get("embedding"), "data.embedding") for item in items]},
        "texts": request.get("texts") or [], "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": prompt}},
        "response_type": "embeddings_by_type",
    }


def error_body(status: int, body: Any) -> dict:
    """An error answer in Cohere's shape: `{"id", "message"}`."""
    return {"id": str(uuid.uuid4()), "message": error_message(status, body)}


# -- streams --------------------------------------------------------------------------------


class CohereEvents:
    """Chat chunks as Cohere v2's typed stream events (SSE)."""

    def __init__(self) -> None:
        self.reader = ChunkReader()
        self.started = False
        self.open: str | None = None  # "content" or "tool": the block an end is owed for
        self.block = -1  # index of the open content block
        self.tool = -1  # index of the open tool call (Cohere numbers them apart)
        self.ended = False

    def _start(self) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        delta = {"message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}
        return [encode_event("message-start", {"id": message_id(self.reader.id), "type": "message-start", "delta": delta})]

    def _close(self) -> list[bytes]:
        if self.open == "content":
            self.open = None
            return [encode_event("content-end", {"type": "content-end", "index": self.block})]
        if self.open == "tool":
            self.open = None
            return [encode_event("tool-call-end", {"type": "tool-call-end", "index": self.tool})]
        return []

    def feed(self, chunk: dict) -> list[bytes]:
        before = {index: len(call.arguments) for index, call in self.reader.calls.items()}
        text, _, started = self.reader.feed(chunk)
        out = self._start()
        if text:
            if self.open != "content":
                out += self._close()
                self.block += 1
                self.open = "content"
                start = {"message": {"content": {"type": "text", "text": ""}}}
                out.append(encode_event("content-start", {"type": "content-start", "index": self.block, "delta": start}))
            out.append(encode_event("content-delta", {"type": "content-delta", "index": self.block, "delta": {"message": {"content": {"text": text}}}}))
        for index, call in sorted(self.reader.calls.items()):
            if index in started:
                out += self._close()
                self.tool += 1
                self.open = "tool"
                first = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
                out.append(encode_event("tool-call-start", {"type": "tool-call-start", "index": self.tool, "delta": {"message": {"tool_calls": first}}}))
            piece = call.arguments[before.get(index, 0):]
            if piece:
                delta = {"message": {"tool_calls": {"function": {"arguments": piece}}}}
                out.append(encode_event("tool-call-delta", {"type": "tool-call-delta", "index": self.tool, "delta": delta}))
        return out

    def finish(self) -> list[bytes]:
        if self.ended:
            return []
        self.ended = True
        out = self._start() + self._close()
        delta = {"finish_reason": FINISH.get(self.reader.finish or "stop", "COMPLETE"), "usage": usage(self.reader.usage)}
        out.append(encode_event("message-end", {"type": "message-end", "delta": delta}))
        return out

    def error(self, status: int, body: Any) -> list[bytes]:
        self.ended = True
        delta = {"finish_reason": "ERROR", "error": error_message(status, body)}
        return self._start() + self._close() + [encode_event("message-end", {"type": "message-end", "delta": delta})]
