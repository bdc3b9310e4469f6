"""The fake upstream's Anthropic Messages endpoint: the Message JSON, the SSE event
sequence (message_start, content blocks with a ping, message_delta, message_stop) and
Anthropic's error shape, as the official SDK parses them. Structured outputs
(`output_config.format`) are answered with JSON valid against their schema, and, as
the real API does, a schema it cannot enforce there or in a strict tool (a keyword
outside its subset, an object not closed with `additionalProperties: false`) is a 400.
With a `stream_fault`, a stream that goes wrong (an `error` event in it, data that is
not JSON, a body cut off)."""

from __future__ import annotations

import uuid

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lockgate.providers.base import looks_like_context_error
from lockgate.providers.mock import example
from lockgate.providers.sse import encode_event
from tests.fakes.upstream import Behaviour, FakeUpstream, count_tokens, faulted, json_response, words

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


# what Anthropic's structured outputs enforce, by type (any other keyword is refused)
SCHEMA_KEYS = {"type", "description", "title", "enum", "const", "anyOf", "allOf", "$ref", "$defs", "definitions"}
TYPE_KEYS = {"object": {"properties", "required", "additionalProperties"}, "string": {"format"}, "array": {"items", "minItems"}}
STRING_FORMATS = {"date-time", "time", "date", "duration", "email", "hostname", "uri", "ipv4", "ipv6", "uuid"}


def schema_problem(schema: object, where: str) -> str | None:
    """What the real API says of a schema it cannot enforce, or None."""
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    unsupported = sorted(set(schema) - SCHEMA_KEYS - TYPE_KEYS.get(kind if isinstance(kind, str) else "", set()))
    if unsupported:
        return f"{where}: For '{kind}' type, properties {', '.join(unsupported)} are not supported"
    if kind == "object" and schema.get("additionalProperties") is not False:
        return f"{where}: For 'object' type, 'additionalProperties' must be explicitly set to false"
    if kind == "string" and "format" in schema and schema["format"] not in STRING_FORMATS:
        return f"{where}: String format '{schema['format']}' is not supported"
    if kind == "array" and schema.get("minItems", 0) not in (0, 1):
        return f"{where}: For 'array' type, 'minItems' values other than 0 or 1 are not supported"
    subs = [*(schema.get("properties") or {}).values(), *(schema.get("$defs") or {}).values(), *(schema.get("definitions") or {}).values(),
            *(schema.get("anyOf") or ()), *(schema.get("allOf") or ()), schema.get("items")]
    return next((problem for sub in subs if (problem := schema_problem(sub, where)) is not None), None)


def enforced_schemas(body: dict) -> list[tuple[str, object]]:
    """The schemas a request asks Anthropic to enforce: its output format and strict tools'."""
    found = []
    fmt = (body.get("output_config") or {}).get("format")
    if isinstance(fmt, dict):
        found.append(("output_config.format.schema", fmt.get("schema")))
    for i, tool in enumerate(body.get("tools") or ()):
        if isinstance(tool, dict) and tool.get("strict"):
            found.append((f"tools.{i}.custom.input_schema", tool.get("input_schema")))
    return found


def anthropic_error(b: Behaviour) -> Response:
    message = b.error_message
    if b.status == 400 and looks_like_context_error(message):
        message = "prompt is too long: 208310 tokens > 200000 maximum"
    request_id = "req_" + uuid.uuid4().hex[:24]
    payload = {"type": "error", "error": {"type": ERROR_TYPES.get(b.status, "api_error"), "message": message}, "request_id": request_id}
    response = json_response(payload, b.status)
    response.headers["request-id"] = request_id
    return response


def text(content: object) -> str:
    if isinstance(content, list):
        return "".join(
            text(block.get("content")) if block.get("type") == "tool_result" else block.get("text", "") for block in content if isinstance(block, dict)
        )
    return content if isinstance(content, str) else ""


def tool_result_of(message: dict) -> str | None:
    """The text of the tool results in a user turn, or None if it carries none."""
    content = message.get("content")
    if message.get("role") != "user" or not isinstance(content, list):
        return None
    results = [block for block in content if isinstance(block, dict) and block.get("type") == "tool_result"]
    return text(results) if results else None


def reply_for(body: dict, b: Behaviour) -> tuple[str | None, dict | None]:
    """The text to answer with, and the tool_use block to answer with (either may be None)."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    result = tool_result_of(last)
    if result is not None:
        return "tool said: " + result, None
    tools = body.get("tools")
    if tools:
        return b.preamble, {"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:24], "name": tools[0]["name"], "input": b.tool_args}
    fmt = (body.get("output_config") or {}).get("format")
    if isinstance(fmt, dict):
        return orjson.dumps(example(fmt.get("schema"))).decode(), None
    if b.reply is not None:
        return b.reply, None
    users = [m for m in messages if m.get("role") == "user"]
    return "echo: " + (text(users[-1].get("content")) if users else ""), None


async def answer(fake: FakeUpstream, body: dict, model: str) -> Response:
    """A Message (or its SSE stream) for `body`, as `model`: also what Vertex's
    rawPredict / streamRawPredict answer for Claude."""
    b = fake.behaviour(model)
    await fake.before_answer(b)
    if b.status != 200:
        return anthropic_error(b)
    problem = next((p for where, schema in enforced_schemas(body) if (p := schema_problem(schema, where)) is not None), None)
    if problem is not None:
        return anthropic_error(Behaviour(status=400, error_message=problem))
    if b.raw_answer is not None and not body.get("stream"):
        return Response(b.raw_answer, media_type="application/json")
    reply, call = reply_for(body, b)
    arguments = orjson.dumps(call["input"]).decode() if call else ""
    usage = {
        "input_tokens": count_tokens(body.get("messages") or []) + count_tokens(body.get("system") or ""),
        "output_tokens": (len(words(reply)) if reply is not None else 0) + (len(words(arguments)) if call else 0),
        "cache_creation_input_tokens": b.cache_write_tokens,
        "cache_read_input_tokens": b.cache_read_tokens,
    }
    message = {
        "id": "msg_" + uuid.uuid4().hex[:24],
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": ([{"type": "text", "text": reply}] if reply is not None else []) + ([call] if call else []),
        "stop_reason": "tool_use" if call else "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    if not body.get("stream"):
        return json_response(message)

    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    chunks = [encode_event("message_start", {"type": "message_start", "message": start})]
    blocks = []
    if reply is not None:
        blocks.append(({"type": "text", "text": ""}, [{"type": "text_delta", "text": piece} for piece in words(reply)]))
    if call:
        # the real API sends an empty fragment first, then the JSON in pieces
        pieces = [""] + [arguments[i : i + 8] for i in range(0, len(arguments), 8)]
        blocks.append(({**call, "input": {}}, [{"type": "input_json_delta", "partial_json": piece} for piece in pieces]))
    for index, (block, deltas) in enumerate(blocks):
        chunks.append(encode_event("content_block_start", {"type": "content_block_start", "index": index, "content_block": block}))
        if index == 0:
            chunks.append(encode_event("ping", {"type": "ping"}))
        chunks += [encode_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}) for d in deltas]
        chunks.append(encode_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    chunks.append(encode_event("message_delta", {"type": "message_delta", "delta": delta, "usage": {"output_tokens": usage["output_tokens"]}}))
    chunks.append(encode_event("message_stop", {"type": "message_stop"}))
    faults = {
        "error": encode_event("error", {"type": "error", "error": {"type": "overloaded_error", "message": b.error_message}}),
        "garbage": b"event: content_block_delta\ndata: <html><body>502 Bad Gateway</body></html>\n\n",
    }
    return fake.stream_response(faulted(chunks, 3, b, faults), b)


def routes(fake: FakeUpstream) -> list[Route]:
    async def messages(request: Request) -> Response:
        body = await fake.record(request)
        return await answer(fake, body, body.get("model", ""))

    async def count(request: Request) -> Response:
        """`/v1/messages/count_tokens`: the request's input tokens; fields a count does not take are refused."""
        body = await fake.record(request)
        extra = set(body) - {"model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers"}
        if extra:
            payload = {"type": "error", "error": {"type": "invalid_request_error", "message": f"{sorted(extra)[0]}: Extra inputs are not permitted"}}
            return json_response(payload, 400)
        tokens = count_tokens(body.get("messages") or []) + count_tokens(body.get("system") or "") + count_tokens(body.get("tools") or [])
        return json_response({"input_tokens": tokens})

    return [Route("/v1/messages", messages, methods=["POST"]), Route("/v1/messages/count_tokens", count, methods=["POST"])]
