"""MCP's JSON-RPC: the tool call a request makes (`McpCall`, in the request context as
`ctx.mcp`), a key's allow-list of servers and tools, and refusals in JSON-RPC's error
shape, the only kind an MCP client reads.

A request on an MCP path (`/mcp`, every server the key may use, tools named
`{server}__{tool}`; `/mcp/{name}`, one server) is read the way a model request is: its
body once, by whoever asks first (kernel/mcp.py). Its `tools/call` names the tool the
middlewares govern, as a chat body's `model` names the model.

Refusals keep their HTTP status (401, 403, 429, ...) with a JSON-RPC error body, which
the `mcp` SDK's client surfaces as the error it is (an `MCPError` with our code and
message); `data` says lockgate's own code, the status and, when there is one, when to
retry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

SEPARATOR = "__"  # `/mcp` names a server's tool `{server}__{tool}`

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
REQUEST_TIMEOUT = -32001  # the mcp SDK's own code for a request that timed out
# lockgate's, in JSON-RPC's range for implementations (-32000..-32099), clear of the SDK's
NOT_FOUND = -32002
FORBIDDEN = -32003
UNAUTHORIZED = -32010
LIMITED = -32029
UPSTREAM_FAILED = -32050

BY_STATUS = {400: INVALID_REQUEST, 401: UNAUTHORIZED, 403: FORBIDDEN, 404: NOT_FOUND, 408: REQUEST_TIMEOUT, 413: INVALID_REQUEST,
             429: LIMITED, 502: UPSTREAM_FAILED, 503: UPSTREAM_FAILED, 504: REQUEST_TIMEOUT}

# Which servers and tools a key may use: server -> tool globs (None: every tool of it);
# `"*"` as a server stands for every server not named. None as a whole: no list, anything.
ToolAllowList = Mapping[str, tuple[str, ...] | None]


@dataclass(slots=True)
class McpCall:
    """One JSON-RPC message to an MCP path, as the middlewares and the relay see it."""

    server: str | None  # the server it goes to: the path's, or the `{server}__` of a tool on /mcp
    method: str | None  # None: not a JSON-RPC request body (a GET or DELETE, or a bad body)
    tool: str | None = None  # a tools/call's tool, as its server names it
    id: Any = None  # the request's id (None: a notification)
    aggregated: bool = False  # on /mcp: lockgate itself answers, tools named {server}__{tool}
    status: str | None = None  # the audit's outcome: ok | error | refused | failed | timeout
    known: bool = False  # the server answered the call: `tool` may be a metric label
    log_arguments: bool = False  # the server's `log_arguments`: the audit line may carry content
    result: Any = None  # the call's result, kept only when `log_arguments`

    @property
    def is_tool_call(self) -> bool:
        return self.method == "tools/call" and self.server is not None and self.tool is not None

    @property
    def label(self) -> str:
        """`{server}__{tool}`: how limits, prices and spend name a tool."""
        return f"{self.server}{SEPARATOR}{self.tool}"


def split_tool(name: str) -> tuple[str | None, str]:
    """`github__search_issues` -> ("github", "search_issues"); a name without the
    separator names no server."""
    server, sep, tool = name.partition(SEPARATOR)
    return (server, tool) if sep and server and tool else (None, name)


def allows_server(allow: ToolAllowList | None, server: str | None) -> bool:
    if allow is None:
        return True
    return server is not None and (server in allow or "*" in allow)


def allows_tool(allow: ToolAllowList | None, server: str | None, tool: str) -> bool:
    """May a key with `allow` call `tool` of `server`?"""
    if allow is None:
        return True
    if server is None:
        return False
    globs = allow[server] if server in allow else allow.get("*", ()) if "*" in allow else ()
    return globs is None or any(fnmatchcase(tool, glob) for glob in globs)


def error_code(status: int, code: str | None) -> int:
    if code == "invalid_json":
        return PARSE_ERROR
    if code == "unknown_tool":
        return INVALID_PARAMS
    if code == "method_not_found":
        return METHOD_NOT_FOUND
    return BY_STATUS.get(status, INTERNAL_ERROR if status >= 500 else INVALID_REQUEST)


def error_body(request_id: Any, status: int, message: str, code: str | None = None, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A JSON-RPC error answering `request_id`, lockgate's own code and status in `data`."""
    data: dict[str, Any] = {"status": status}
    if code is not None:
        data["code"] = code
    retry = (headers or {}).get("retry-after")
    if retry is not None:
        data["retry_after_s"] = int(retry) if retry.isdigit() else retry
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": error_code(status, code), "message": message, "data": data}}


def from_openai(request_id: Any, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """An OpenAI-shaped error (what every lockgate layer writes) as a JSON-RPC error."""
    error = body.get("error")
    error = error if isinstance(error, Mapping) else {}
    code = error.get("code")
    return error_body(request_id, status, str(error.get("message") or "refused"), code if isinstance(code, str) else None, headers)
