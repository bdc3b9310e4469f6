"""The OpenAI Responses API (POST /v1/responses) for upstreams that only speak chat.

A Responses request becomes a chat-completions request for the provider's chat
adapter, and the adapter's `chat.completion` (or stream of `chat.completion.chunk`s)
becomes a Response object (or the Responses event stream) again. OpenAI and Azure
serve /v1/responses natively; for them only the usage helpers at the bottom apply.

Anything that needs a stored response, conversation, prompt or file at OpenAI is
refused with `UnsupportedRequest` rather than ignored. The one stored state clients
rely on by default is kept: the output items lockgate itself issued (`kept_item`), which
the proxy holds briefly per caller so a later `item_reference` to one of them (the
Vercel AI SDK sends those for earlier answers' text) resolves to it; a reference to an
item lockgate does not hold raises `UnknownItem` (OpenAI's 404).
Function tools are echoed with every field the spec requires; `strict` says whether
the translated call was strict (only when the client asked: OpenAI's own default of
true cannot be promised by every provider behind the chat translation). `model` is the
model the request named, never the deployment's own (often dated) model name.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from lockgate.providers import shapes
from lockgate.providers.base import TranslationError, UnsupportedRequest, now, text_of, usage_dict
from lockgate.providers.sse import encode_event

# settings with the same name and meaning in both APIs
SAME_SETTINGS = ("temperature", "top_p", "parallel_tool_calls", "user", "safety_identifier")

STATEFUL = {
    "previous_response_id": "previous_response_id needs the earlier response stored at OpenAI; this model is "
    "served statelessly, so send the whole conversation in `input` instead",
    "conversation": "conversations are stored at OpenAI; this model is served statelessly, so send the "
    "whole conversation in `input` instead",
    "prompt": "stored prompt templates live at OpenAI and cannot be used with this model; send "
    "`instructions` and `input` instead",
    "background": "background responses need a response store; this model can only answer in the foreground",
}

INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}

TERMINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")


class UnknownItem(Exception):
    """An `item_reference` to an item lockgate does not hold (unknown, expired, or another caller's)."""

    def __init__(self, item_id: str) -> None:
        super().__init__(item_id)
        self.item_id = item_id


# -- request ---------------------------------------------------------------------


def to_chat(body: dict, items: Mapping[str, dict] | None = None) -> dict:
    """A Responses request as a chat-completions request, `item_reference`s resolved
    from `items` (id -> kept item). Unknown fields are dropped."""
    for field, message in STATEFUL.items():
        if body.get(field):
            raise UnsupportedRequest(message, param=field)
    instructions = shapes.string(body.get("instructions"), "instructions")
    messages = [{"role": "system", "content": instructions}] if instructions else []
    messages.extend(input_messages(body.get("input"), items or {}))
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    for name in SAME_SETTINGS:
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    if body.get("tools"):
        chat["tools"] = [chat_tool(tool, f"tools[{i}]") for i, tool in enumerate(shapes.objects(body["tools"], "tools"))]
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = chat_tool_choice(body["tool_choice"])
    response_format = chat_response_format(shapes.mapping(shapes.mapping(body.get("text"), "text").get("format"), "text.format"))
    if response_format:
        chat["response_format"] = response_format
    effort = shapes.mapping(body.get("reasoning"), "reasoning").get("effort")
    if effort:
        chat["reasoning_effort"] = effort
    if body.get("stream"):
        # usage arrives only on request in chat streams, and response.completed must carry it
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def referenced_ids(body: dict) -> list[str]:
    """The ids the request's `item_reference` input items name."""
    input_ = body.get("input")
    if not isinstance(input_, list):
        return []
    return [item["id"] for item in input_ if isinstance(item, dict) and item.get("type") == "item_reference" and isinstance(item.get("id"), str)]


def input_messages(input_: Any, items: Mapping[str, dict]) -> list[dict]:
    if input_ is None:
        return []
    if isinstance(input_, str):
        return [{"role": "user", "content": input_}]
    messages: list[dict] = []
    for i, item in enumerate(shapes.objects(input_, "input")):
        where = f"input[{i}]"
        if item.get("type") == "item_reference":
            item = referenced(item, items)
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(chat_message(item, where))
        elif kind == "function_call":
            add_tool_call(messages, item, where)
        elif kind == "function_call_output":
            call_id = shapes.name(item.get("call_id"), f"{where}.call_id")
            messages.append({"role": "tool", "tool_call_id": call_id, "content": tool_output(item.get("output"), f"{where}.output")})
        elif kind != "reasoning":
            # reasoning items are OpenAI's own state and mean nothing to another model
            raise UnsupportedRequest(f"input items of type {kind!r} cannot be sent to this model", param="input")
    return messages


def referenced(reference: dict, items: Mapping[str, dict]) -> dict:
    item_id = reference.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise UnsupportedRequest("an item_reference must name the item's id", param="input")
    if item_id not in items:
        raise UnknownItem(item_id)
    return items[item_id]


def kept_item(item: dict) -> dict | None:
    """An output item as it is kept for a later `item_reference`: only what replaying it
    as input needs (what the client would have sent in its place), None for the rest."""
    if item.get("type") == "message":
        return {"type": "message", "role": "assistant", "content": assistant_text(item.get("content"), "output.content")}
    if item.get("type") == "function_call":
        return {"type": "function_call", "call_id": item["call_id"], "name": item["name"], "arguments": item.get("arguments") or ""}
    return None


def chat_message(item: dict, where: str) -> dict:
    role, content = item.get("role"), item.get("content")
    if role == "assistant":
        return {"role": "assistant", "content": assistant_text(content, f"{where}.content")}
    if role not in ("user", "system", "developer"):
        raise UnsupportedRequest(f"unknown message role {role!r}", param="input")
    # the chat adapters behind this path speak providers where developer instructions are system ones
    chat_role = "system" if role == "developer" else role
    if isinstance(content, str):
        return {"role": chat_role, "content": content}
    if not isinstance(content, list):
        raise TranslationError(f"`{where}.content` must be a string or an array of parts.", f"{where}.content")
    return {"role": chat_role, "content": [chat_part(p) for p in shapes.objects(content, f"{where}.content")]}


def assistant_text(content: Any, where: str) -> str:
    """Earlier assistant output as plain text; a refusal stays in the history as what was said."""
    if isinstance(content, str):
        return content
    parts = shapes.objects(content, where)
    return "".join(shapes.string(p.get("refusal"), f"{where}.refusal") if p.get("type") == "refusal" else text_of([p]) for p in parts)


def chat_part(part: dict) -> dict:
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": part.get("text", "")}
    if kind == "input_image":
        if not part.get("image_url"):
            raise UnsupportedRequest(
                "input_image by file_id needs OpenAI's file storage; send the image as image_url "
                "(an https or data: URL)",
                param="input",
            )
        return {"type": "image_url", "image_url": {"url": shapes.string(part["image_url"], "input.content.image_url"), "detail": part.get("detail") or "auto"}}
    if kind == "input_file" and part.get("file_data"):
        file = {"file_data": part["file_data"]}
        if part.get("filename"):
            file["filename"] = part["filename"]
        return {"type": "file", "file": file}
    if kind == "input_file":
        raise UnsupportedRequest("input_file by file_id or file_url cannot be sent to this model; send file_data", param="input")
    raise UnsupportedRequest(f"content parts of type {kind!r} cannot be sent to this model", param="input")


def add_tool_call(messages: list[dict], item: dict, where: str) -> None:
    """Chat puts one turn's calls, and the text before them, in a single assistant message."""
    if messages and messages[-1]["role"] == "assistant":
        turn = messages[-1]
    else:
        turn = {"role": "assistant", "content": None}
        messages.append(turn)
    function = {"name": shapes.name(item.get("name"), f"{where}.name"), "arguments": shapes.string(item.get("arguments"), f"{where}.arguments")}
    call = {"id": shapes.name(item.get("call_id"), f"{where}.call_id"), "type": "function", "function": function}
    turn.setdefault("tool_calls", []).append(call)


def tool_output(output: Any, where: str) -> str:
    if isinstance(output, str):
        return output
    kinds = {str(p.get("type")) for p in shapes.objects(output, where)} - {"input_text"}
    if kinds:
        raise UnsupportedRequest(f"function_call_output parts of type {sorted(kinds)} cannot be sent to this model", param="input")
    return text_of(output)


def chat_tool(tool: dict, where: str) -> dict:
    if tool.get("type") != "function":
        raise UnsupportedRequest(
            f"the {tool.get('type')!r} tool runs inside OpenAI and is not available for this model; "
            "only function tools are supported",
            param="tools",
        )
    function = {"name": shapes.name(tool.get("name"), f"{where}.name")}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def chat_tool_choice(choice: Any) -> str | dict:
    if isinstance(choice, str):
        return choice
    if not isinstance(choice, dict):
        raise TranslationError("`tool_choice` must be a string or an object.", "tool_choice")
    if choice.get("type") == "function":
        return {"type": "function", "function": {"name": shapes.name(choice.get("name"), "tool_choice.name")}}
    raise UnsupportedRequest(f"tool_choice of type {choice.get('type')!r} is not supported for this model", param="tool_choice")


def chat_response_format(fmt: dict) -> dict | None:
    kind = fmt.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = {key: fmt[key] for key in ("name", "schema", "strict", "description") if key in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise UnsupportedRequest(f"text.format of type {kind!r} is not supported", param="text.format")


# -- response ----------------------------------------------------------------------


def from_chat(chat: dict, request: dict) -> dict:
    """A `chat.completion` as the Response object OpenAI would have returned."""
    choice, message = shapes.first_choice(chat)
    reason = INCOMPLETE_REASONS.get(shapes.string(choice.get("finish_reason"), "finish_reason"))
    status = "incomplete" if reason else "completed"
    text = text_of(message.get("content"))
    calls = shapes.objects(message.get("tool_calls"), "message.tool_calls")
    output = []
    if text or not calls:
        output.append(message_item(status, text))
    for call in calls:
        function = shapes.mapping(call.get("function"), "tool_calls.function")
        item = function_call_item(shapes.string(call.get("id"), "tool_calls.id") or new_call_id(), shapes.string(function.get("name"), "function.name"),
                                  "completed")
        item["arguments"] = shapes.string(function.get("arguments"), "function.arguments")
        output.append(item)
    shell = response_shell(request, new_id("resp"), chat.get("created") or now(), request.get("model") or chat.get("model"))
    return finished(shell, output, reason, usage_from_chat(chat.get("usage")))


def response_shell(request: dict, response_id: str, created_at: int, model: str | None) -> dict:
    """An in-progress Response echoing the request's settings, as OpenAI's does."""

    def given(name: str, default: Any) -> Any:
        value = request.get(name)
        return default if value is None else value

    text = request.get("text") or {}
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "background": False,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": request.get("max_tool_calls"),
        "model": model,
        "output": [],
        "parallel_tool_calls": given("parallel_tool_calls", True),
        "previous_response_id": None,
        "prompt_cache_key": request.get("prompt_cache_key"),
        "reasoning": given("reasoning", {"effort": None, "summary": None}),
        "safety_identifier": request.get("safety_identifier"),
        "service_tier": "default",
        "store": False,  # the Response is not kept (GET /v1/responses/{id} will not find it); only its output items are, for item_reference
        "temperature": given("temperature", 1.0),
        "text": {**text, "format": text.get("format") or {"type": "text"}},
        "tool_choice": given("tool_choice", "auto"),
        "tools": [echoed_tool(tool) for tool in request.get("tools") or []],
        "top_logprobs": given("top_logprobs", 0),
        "top_p": given("top_p", 1.0),
        "truncation": given("truncation", "disabled"),
        "usage": None,
        "user": request.get("user"),
        "metadata": given("metadata", {}),
    }


def echoed_tool(tool: dict) -> dict:
    """A function tool as the Response echoes it: every field the spec requires, `strict`
    as it was applied (the chat call is strict only when the client asked)."""
    return {
        "type": "function",
        "name": tool.get("name"),
        "description": tool.get("description"),
        "parameters": tool.get("parameters"),
        "strict": bool(tool.get("strict")),
    }


def finished(shell: dict, output: list[dict], reason: str | None, usage: dict | None) -> dict:
    response = {**shell, "output": output, "usage": usage}
    if reason:
        response.update(status="incomplete", incomplete_details={"reason": reason})
    else:
        response.update(status="completed", completed_at=now())
    return response


def message_item(status: str, text: str | None) -> dict:
    content = [] if text is None else [output_text_part(text)]
    return {"id": new_id("msg"), "type": "message", "status": status, "content": content, "role": "assistant"}


def output_text_part(text: str) -> dict:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def function_call_item(call_id: str, name: str, status: str) -> dict:
    return {"id": new_id("fc"), "type": "function_call", "status": status, "arguments": "", "call_id": call_id, "name": name}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


# -- usage -------------------------------------------------------------------------


def usage_from_chat(usage: dict | None) -> dict | None:
    """OpenAI chat usage in the Responses shape."""
    if not usage or not isinstance(usage, dict):
        return None
    prompt = shapes.count(usage.get("prompt_tokens"))
    completion = shapes.count(usage.get("completion_tokens"))
    prompt_details = shapes.part(usage.get("prompt_tokens_details"))
    completion_details = shapes.part(usage.get("completion_tokens_details"))
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": shapes.count(prompt_details.get("cached_tokens")),
            "cache_write_tokens": shapes.count(prompt_details.get("cache_write_tokens")),
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": shapes.count(completion_details.get("reasoning_tokens"))},
        "total_tokens": shapes.count(usage.get("total_tokens")) or prompt + completion,
    }


def usage_to_chat(usage: dict | None) -> dict | None:
    """Responses usage in OpenAI's chat shape, the one budgets and logs read."""
    if not usage or not isinstance(usage, dict):
        return None
    input_details = shapes.part(usage.get("input_tokens_details"))
    output_details = shapes.part(usage.get("output_tokens_details"))
    return usage_dict(
        shapes.count(usage.get("input_tokens")),
        shapes.count(usage.get("output_tokens")),
        cached=shapes.count(input_details.get("cached_tokens")),
        cache_write=shapes.count(input_details.get("cache_write_tokens")),
        reasoning=shapes.count(output_details.get("reasoning_tokens")),
    )


def passthrough_usage(data: dict) -> dict | None:
    """Chat-shaped usage of a native (non-streamed) Response."""
    return usage_to_chat(data.get("usage"))


def passthrough_stream_usage(event: str, data: dict, usage: dict | None) -> dict | None:
    """Chat-shaped usage once a native stream's terminal event carries it, else `usage`."""
    if (data.get("type") or event) not in TERMINAL_EVENTS:
        return usage
    return usage_to_chat(shapes.part(data.get("response")).get("usage")) or usage


# -- stream ------------------------------------------------------------------------


class ResponsesStream:
    """Turns a chat adapter's `chat.completion.chunk` dicts into Responses SSE events.

    Chat streams one tool call's fragments together before the next, as OpenAI does, so
    one output item is open at a time and a new one closes the last, as in Responses.
    """

    def __init__(self, request: dict) -> None:
        self._shell = response_shell(request, new_id("resp"), now(), request.get("model"))
        self._sequence = 0
        self._started = False
        self._done = False
        self._output: list[dict] = []
        self._index: dict[str, int] = {}  # output item id -> output_index
        self._open: dict | None = None
        self._calls: dict[int, dict] = {}  # chat tool_calls index -> its output item
        self._finish_reason: str | None = None
        self._usage: dict | None = None

    @property
    def done(self) -> bool:
        """Whether the stream's last event (completed, incomplete or failed) was made."""
        return self._done

    @property
    def output(self) -> list[dict]:
        """The output items issued so far."""
        return self._output

    def feed(self, chunk: dict) -> list[bytes]:
        if self._done:
            return []
        events = self._start()
        if "error" in chunk:
            return events + self._fail(chunk["error"] or {})
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._text(delta["content"])
            for call in delta.get("tool_calls") or []:
                events += self._tool_call(call)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return events

    def finish(self, usage: dict | None) -> list[bytes]:
        if self._done:
            return []
        self._done = True
        reason = INCOMPLETE_REASONS.get(self._finish_reason or "")
        events = self._start() + self._close("incomplete" if reason else "completed")
        response = finished(self._shell, self._output, reason, usage_from_chat(usage or self._usage))
        events.append(self._event("response.incomplete" if reason else "response.completed", response=response))
        return events

    def _event(self, type_: str, **fields: Any) -> bytes:
        payload = {"type": type_, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return encode_event(type_, payload)

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        return [self._event("response.created", response=self._shell), self._event("response.in_progress", response=self._shell)]

    def _add(self, item: dict) -> bytes:
        self._open = item
        self._index[item["id"]] = len(self._output)
        self._output.append(item)
        return self._event("response.output_item.added", output_index=self._index[item["id"]], item=item)

    def _text(self, delta: str) -> list[bytes]:
        events: list[bytes] = []
        item = self._open
        if item is None or item["type"] != "message":
            events += self._close("completed")
            item = message_item("in_progress", None)
            events.append(self._add(item))
            part = output_text_part("")
            events.append(self._event("response.content_part.added", **self._at(item), content_index=0, part=part))
            item["content"].append(part)
        item["content"][0]["text"] += delta
        events.append(self._event("response.output_text.delta", **self._at(item), content_index=0, delta=delta, logprobs=[]))
        return events

    def _tool_call(self, call: dict) -> list[bytes]:
        events: list[bytes] = []
        function = call.get("function") or {}
        index = call.get("index", 0)
        item = self._calls.get(index)
        if item is None:
            events += self._close("completed")
            item = function_call_item(call.get("id") or new_call_id(), function.get("name") or "", "in_progress")
            self._calls[index] = item
            events.append(self._add(item))
        if function.get("arguments") and item is self._open:
            item["arguments"] += function["arguments"]
            events.append(self._event("response.function_call_arguments.delta", **self._at(item), delta=function["arguments"]))
        return events

    def _at(self, item: dict) -> dict:
        return {"item_id": item["id"], "output_index": self._index[item["id"]]}

    def _close(self, status: str) -> list[bytes]:
        item, self._open = self._open, None
        if item is None:
            return []
        at = self._at(item)
        if item["type"] == "message":
            part = item["content"][0]
            events = [
                self._event("response.output_text.done", **at, content_index=0, text=part["text"], logprobs=[]),
                self._event("response.content_part.done", **at, content_index=0, part=part),
            ]
        else:
            events = [self._event("response.function_call_arguments.done", **at, name=item["name"], arguments=item["arguments"])]
        item["status"] = status
        events.append(self._event("response.output_item.done", output_index=at["output_index"], item=item))
        return events

    def _fail(self, error: dict) -> list[bytes]:
        """OpenAI's in-stream failure: an `error` event, then `response.failed`.

        The error event carries its fields both at the top (the documented shape) and
        under `error` (what OpenAI sends, which the openai SDK raises as an APIError).
        """
        self._done = True
        if self._open is not None:
            self._open["status"] = "incomplete"
            self._open = None
        message = error.get("message") or "upstream error"
        code, param = error.get("code"), error.get("param")
        nested = {"type": error.get("type") or "server_error", "code": code, "message": message, "param": param}
        # response.error.code is a closed set of OpenAI's own failure codes
        failure = "rate_limit_exceeded" if "rate_limit_exceeded" in (code, error.get("type")) else "server_error"
        failed = {**self._shell, "status": "failed", "output": self._output, "usage": usage_from_chat(self._usage)}
        failed["error"] = {"code": failure, "message": message, "param": param, "type": nested["type"]}
        return [
            self._event("error", code=code, message=message, param=param, error=nested),
            self._event("response.failed", response=failed),
        ]
