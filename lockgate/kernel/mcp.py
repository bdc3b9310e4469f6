"""MCP requests as the middlewares read them: which paths are MCP's, the JSON-RPC message
a request carries (`mcp_request`, the counterpart of `model_request`), and an answer's
`tools/list` cut down to what a key may call (`filtered_tools`).

The paths: `/mcp` (lockgate's own MCP server over every server a key may use, tools
named `{server}__{tool}`) and `/mcp/{name}` (one server). Around another app the same
paths hold: an MCP server of your own mounted at `/mcp/notes` is the server `notes`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import Message, Receive, Scope, Send

from lockgate.kernel.context import RequestContext, get_context, load_json, replay, route_path
from lockgate.kernel.errors import GatewayError
from lockgate.kernel.jsonrpc import McpCall, split_tool

PREFIX = "/mcp"
SERVER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_LISTING_BYTES = 8 * 1024 * 1024  # a tools/list answer held to be filtered; past this it is refused


def mcp_target(scope: Scope) -> tuple[bool, str | None] | None:
    """(aggregated, server) of a request to an MCP path; None for any other path."""
    if scope["type"] != "http":
        return None
    path = route_path(scope)
    if path == PREFIX or path == PREFIX + "/":
        return True, None
    if path.startswith(PREFIX + "/"):
        name = path[len(PREFIX) + 1 :].rstrip("/")
        if SERVER_NAME.fullmatch(name) and "__" not in name:
            return False, name
    return None


def is_mcp(scope: Scope) -> bool:
    return mcp_target(scope) is not None


def read_call(body: Any, aggregated: bool, server: str | None) -> McpCall:
    """The message of a parsed JSON-RPC body."""
    if not isinstance(body, dict):
        return McpCall(server, None, aggregated=aggregated)
    method = body.get("method")
    call = McpCall(server, method if isinstance(method, str) else None, id=body.get("id"), aggregated=aggregated)
    params = body.get("params")
    if call.method == "tools/call" and isinstance(params, dict) and isinstance(params.get("name"), str):
        name: str = params["name"]
        if aggregated:
            call.server, call.tool = split_tool(name)
        else:
            call.tool = name
    return call


async def mcp_request(scope: Scope, receive: Receive) -> tuple[RequestContext | None, Receive]:
    """The context of a request to an MCP path with `ctx.mcp` set (its body read once,
    when it is a POST), and the `receive` to hand the inner app. None: not an MCP path.
    A bad body leaves `ctx.mcp.method` None: the relay answers that in JSON-RPC terms."""
    target = mcp_target(scope)
    if target is None:
        return None, receive
    ctx = get_context(scope)
    if ctx.mcp is not None:
        return ctx, replay(ctx, receive)
    aggregated, server = target
    if scope.get("method") != "POST":
        ctx.mcp = McpCall(server, None, aggregated=aggregated)
        return ctx, receive
    try:
        await load_json(scope, receive)
    except GatewayError:
        ctx.mcp = McpCall(server, None, aggregated=aggregated)
        return ctx, replay(ctx, receive)
    ctx.mcp = read_call(ctx.body, aggregated, server)
    return ctx, replay(ctx, receive)


# -- tools/list, filtered -------------------------------------------------------------------
EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


def filter_listing(message: Any, keep: Callable[[str], bool]) -> Any:
    """A JSON-RPC answer with `result.tools` cut to the tools `keep` accepts."""
    if isinstance(message, dict) and isinstance(message.get("result"), dict) and isinstance(message["result"].get("tools"), list):
        tools = [t for t in message["result"]["tools"] if isinstance(t, dict) and isinstance(t.get("name"), str) and keep(t["name"])]
        return {**message, "result": {**message["result"], "tools": tools}}
    return message


def filter_body(body: bytes, content_type: str, keep: Callable[[str], bool]) -> bytes:
    """A tools/list answer's body (JSON, or an SSE stream of JSON-RPC messages) filtered."""
    if content_type.startswith("text/event-stream"):
        events = []
        for event in EVENT_END.split(body):
            if not event.strip():
                continue
            lines = event.splitlines()
            data = b"\n".join(line[5:].lstrip(b" ") for line in lines if line.startswith(b"data:"))
            other = [line for line in lines if not line.startswith(b"data:")]
            if data:
                try:
                    data = orjson.dumps(filter_listing(orjson.loads(data), keep))
                except orjson.JSONDecodeError:
                    data = b""  # not JSON-RPC: nothing of it goes on
            events.append(b"\r\n".join([*other, *([b"data: " + data] if data else [])]) + b"\r\n\r\n")
        return b"".join(events)
    try:
        return orjson.dumps(filter_listing(orjson.loads(body), keep))
    except orjson.JSONDecodeError:
        return body


def filtered_tools(send: Send, keep: Callable[[str], bool]) -> Send:
    """`send` for a tools/list request: the answer is held (it is small, and ends with the
    list) and goes out with only the tools `keep` accepts."""
    start: Message | None = None
    parts: list[bytes] = []
    size = 0

    async def wrapped(message: Message) -> None:
        nonlocal start, size
        if message["type"] == "http.response.start":
            start = message
            return
        if message["type"] != "http.response.body" or start is None:
            await send(message)
            return
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= MAX_LISTING_BYTES:
            parts.append(chunk)
        if message.get("more_body", False):
            return
        held, start = start, None
        headers = [(k, v) for k, v in held.get("headers", ()) if k != b"content-length"]
        content_type = next((v.decode("latin-1").lower() for k, v in headers if k == b"content-type"), "")
        if size > MAX_LISTING_BYTES:
            body = orjson.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32603, "message": "The tool list is too large to filter."}})
            headers = [(b"content-type", b"application/json")]
        else:
            body = filter_body(b"".join(parts), content_type, keep) if 200 <= held["status"] < 300 else b"".join(parts)
        await send({**held, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return wrapped


def answer_of(body: bytes, content_type: str, request_id: Any) -> dict[str, Any] | None:
    """The JSON-RPC response answering `request_id` in an answer's body (JSON, or an SSE
    stream of messages); None when there is none."""
    if content_type.startswith("text/event-stream"):
        candidates = []
        for event in EVENT_END.split(body):
            data = b"\n".join(line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:"))
            if data:
                candidates.append(data)
    else:
        candidates = [body]
    for data in candidates:
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if isinstance(message, dict) and message.get("id") == request_id and ("result" in message or "error" in message):
            return message
    return None
