"""Remote MCP servers behind lockgate: gateway.yaml's `mcp_servers:`, relayed over
Streamable HTTP (README "MCP").

    mcp_servers:
      - name: github
        url: https://mcp.example.com/mcp                      # Streamable HTTP
        headers: {Authorization: "Bearer ${GITHUB_MCP_TOKEN}"}   # lockgate's credentials: sent upstream only
        tools: [search_issues, "get_*"]   # optional: the tools lockgate exposes at all (names or globs)
        timeout_s: 30                     # connect, first byte, and any silence of the answer
        max_response_bytes: 10485760      # a JSON answer, or a stream, past this is cut off with a JSON-RPC error
        prices: {search_issues: 0.002, "*": 0.0005}   # USD per call (the budget middleware charges them)
        log_arguments: false              # the audit line carries arguments and results (never when incognito)

Two routes:

- `/mcp/{name}` relays JSON-RPC to one server both ways, SSE streamed as it comes (a
  progress notification reaches the client when the server sends it). Only the MCP
  headers go upstream (`Mcp-Protocol-Version`, `Mcp-Method`, `Mcp-Name`, `Mcp-Param-*`,
  `Last-Event-ID`) with the server's own `headers:`; never the client's credentials.
- `/mcp` is lockgate's own MCP server over every server the key may use: it answers
  `initialize`, `ping` and `server/discover` itself, lists the tools of every server as
  `{server}__{tool}`, and routes each `tools/call` to its server.

Sessions: lockgate hands out its own `Mcp-Session-Id`s and keeps, in the store, which
upstream session each stands for (and for which key): any worker or replica serves the
next request of a session, and a session id is no use with another key. The stateless
2026-07-28 revision needs none: its requests go through as they are.

An answer that is not JSON-RPC, or runs past `max_response_bytes`, is cut off cleanly: a
JSON answer becomes a JSON-RPC error, a stream ends with one (an SSE event answering the
request). A server that is down or silent answers a JSON-RPC error within `timeout_s`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import orjson
from starlette.types import Message, Receive, Scope, Send

from lockgate.kernel import metrics
from lockgate.kernel.context import RequestContext, get_context, header, redacted
from lockgate.kernel.errors import send_json
from lockgate.kernel.jsonrpc import SEPARATOR, McpCall, allows_server, allows_tool, error_body
from lockgate.kernel.logs import get_logger, info_line
from lockgate.kernel.mcp import EVENT_END, SERVER_NAME, filter_listing, mcp_request
from lockgate.kernel.parsing import Checker
from lockgate.kernel.store import Store, guard
from lockgate.providers.base import UpstreamRequest
from lockgate.proxy.upstream import UpstreamClient, UpstreamError, UpstreamTimeout, UpstreamTooLarge

log = get_logger("lockgate.mcp")

SERVER_KEYS = {"name", "url", "headers", "tools", "timeout_s", "max_response_bytes", "prices", "log_arguments", "idempotent"}
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_RESPONSE_BYTES = 10 * 1024 * 1024
SESSION_TTL_S = 24 * 3600.0  # a session's routing entry in the store
STREAM_SILENCE_S = 300.0  # a GET stream (server-initiated messages) may be idle this long
SESSION_HEADER = "mcp-session-id"
# the client's headers that go upstream: MCP's own, nothing else (no credentials, no cookies)
FORWARDED = ("mcp-protocol-version", "mcp-method", "mcp-name", "last-event-id")
PARAM_HEADER = "mcp-param-"
SESSION_PREFIX = "mcp-session:"
KNOWN_SESSIONS_MAX = 10_000
HANDSHAKE_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
MODERN_VERSIONS = ("2026-07-28",)
PROTOCOL_META = "io.modelcontextprotocol/protocolVersion"
CALLS_PREFIX = "mcp-calls:"  # + UTC day: a hash of `{key}|{server}__{tool}|{outcome}` -> calls
CALLS_TTL_S = 8 * 86400.0
MAX_SEEN_TOOLS = 1000
OTHER = "other"


@dataclass(frozen=True, slots=True)
class McpServer:
    name: str
    url: str
    headers: Mapping[str, str] = field(repr=False, default_factory=dict)  # lockgate's credentials: never logged
    tools: tuple[str, ...] | None = None  # what lockgate exposes (globs); None: every tool
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    prices: Mapping[str, float] = field(default_factory=dict)  # tool (or glob) -> USD per call
    log_arguments: bool = False
    idempotent: tuple[str, ...] = ()

    def exposes(self, tool: str) -> bool:
        return self.tools is None or any(fnmatchcase(tool, glob) for glob in self.tools)

    def price(self, tool: str) -> float | None:
        if tool in self.prices:
            return self.prices[tool]
        return next((usd for glob, usd in self.prices.items() if fnmatchcase(tool, glob)), None)


def parse_mcp_servers(check: Checker, raw: dict[str, Any]) -> tuple[McpServer, ...]:
    nodes = raw.get("mcp_servers")
    if nodes is None:
        return ()
    if not isinstance(nodes, list):
        check.fail(raw, "mcp_servers", "`mcp_servers:` must be a list of servers, each with `name` and `url`")
        return ()
    servers: dict[str, McpServer] = {}
    for index, node in enumerate(nodes):
        if not isinstance(node, dict):
            check.fail(nodes, index, "each MCP server must be a mapping with `name` and `url`")
            continue
        check.unknown(node, SERVER_KEYS, "an MCP server")
        name = check.string(node, "name", required=True, what="an MCP server")
        url = check.expand(check.string(node, "url", required=True, what="an MCP server"), node, "url")
        if name is not None and (not SERVER_NAME.fullmatch(name) or SEPARATOR in name):
            check.fail(node, "name", f"an MCP server's name is letters, digits, `.`, `-`, `_` (never `{SEPARATOR}`, which splits /mcp's tool names): {name!r}")
        if name in servers:
            check.fail(node, "name", f"MCP server {name!r} is defined twice")
        if isinstance(url, str) and not re.match(r"https?://[^/\s]+", url):
            check.fail(node, "url", "an MCP server's url is its Streamable HTTP endpoint, like https://mcp.example.com/mcp")
        headers_node = check.mapping(node, "headers", "headers")
        headers = {str(k): str(check.expand(v, headers_node, k)) for k, v in headers_node.items()}
        tools = node.get("tools")
        if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, str) and t for t in tools)):
            check.fail(node, "tools", "tools must be a list of tool names or globs (leave it out to expose every tool)")
            tools = None
        idempotent = node.get("idempotent") or []
        if not isinstance(idempotent, list) or not all(isinstance(t, str) for t in idempotent):
            check.fail(node, "idempotent", "idempotent must be a list of tool names")
            idempotent = []
        price_node = check.mapping(node, "prices", "prices")
        prices = {str(tool): float(check.number(price_node, tool, 0.0)) for tool in price_node}
        log_arguments = node.get("log_arguments", False)
        if not isinstance(log_arguments, bool):
            check.fail(node, "log_arguments", "log_arguments must be true or false")
        if name is None or not isinstance(url, str):
            continue
        servers[name] = McpServer(
            name=name,
            url=url,
            headers=headers,
            tools=tuple(tools) if isinstance(tools, list) else None,
            timeout_s=check.number(node, "timeout_s", DEFAULT_TIMEOUT_S, minimum=0.01),
            max_response_bytes=check.number(node, "max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES, minimum=1024, integer=True),
            prices=prices,
            log_arguments=log_arguments is True,
            idempotent=tuple(idempotent),
        )
    return tuple(servers.values())


# -- answers ----------------------------------------------------------------------------------
async def answer(send: Send, status: int, payload: dict[str, Any] | None, session: str | None = None) -> None:
    headers = [(b"mcp-session-id", session.encode())] if session else []
    if payload is None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    await send_json(send, status, payload, headers)


async def fail(send: Send, call: McpCall, status: int, message: str, code: str, outcome: str = "failed") -> None:
    """A JSON-RPC error for the request, lockgate's code and status in its `data`."""
    call.status = call.status or outcome
    await send_json(send, status, error_body(call.id, status, message, code))


async def not_jsonrpc(ctx: RequestContext, call: McpCall, send: Send) -> None:
    """A body that is not JSON (-32700), or JSON that is not a JSON-RPC message (-32600)."""
    if ctx.body_error is not None or not isinstance(ctx.body, dict):
        await fail(send, call, 400, "The body is not a JSON object (MCP has no JSON-RPC batches).", "invalid_json", "refused")
    else:
        await fail(send, call, 400, "The body is not a JSON-RPC message (no `method`).", "invalid_request", "refused")


def result(call: McpCall, payload: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": call.id, "result": payload}


def sse_events(buffer: bytearray) -> list[bytes]:
    """The complete events at the head of `buffer` (taken out of it)."""
    events: list[bytes] = []
    while True:
        found = EVENT_END.search(buffer)
        if found is None:
            return events
        events.append(bytes(buffer[: found.end()]))
        del buffer[: found.end()]


def event_data(event: bytes) -> bytes:
    return b"\n".join(line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:"))


def first_response(body: bytes, content_type: str) -> Any:
    """The JSON-RPC response in a JSON or SSE answer (None: there is none)."""
    if content_type.startswith("text/event-stream"):
        for event in EVENT_END.split(body):
            data = event_data(event)
            if data:
                try:
                    message = orjson.loads(data)
                except orjson.JSONDecodeError:
                    return None
                if isinstance(message, dict) and ("result" in message or "error" in message):
                    return message
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def note_outcome(call: McpCall, message: Any) -> bool:
    """The audit's outcome from the response answering the call; whether it was that."""
    if not isinstance(message, dict) or message.get("id") != call.id or call.id is None:
        return False
    if "error" in message:
        call.status = "error"
        return True
    if "result" in message:
        res = message["result"]
        call.status = "tool_error" if isinstance(res, dict) and res.get("isError") is True else "ok"
        call.known = True
        if call.log_arguments:
            call.result = res
        return True
    return False


async def drain(chunks: Any, limit_s: float = 1.0, max_bytes: int = 64 * 1024) -> None:
    """Reads what an upstream sends after the answer (its stream's end, usually at once),
    so its connection goes back to the pool; one that keeps sending is closed instead."""
    size = 0
    try:
        async with asyncio.timeout(limit_s):
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    return
    except (TimeoutError, UpstreamError):
        return


# -- the relay --------------------------------------------------------------------------------
class McpRelay:
    def __init__(self, servers: tuple[McpServer, ...], client: UpstreamClient, store: Store) -> None:
        self.servers: Mapping[str, McpServer] = {s.name: s for s in servers}  # swapped whole by a reload
        self.client = client
        self.store = store
        self.known: dict[str, dict[str, Any]] = {}  # session entries this process has read (they never change)
        self.seen: dict[str, set[str]] = {}  # the tools each server listed to this process: what a label may name

    # -- audit -----------------------------------------------------------------------------------
    def note_tools(self, server: str, message: Any) -> None:
        result = message.get("result") if isinstance(message, dict) else None
        tools = result.get("tools") if isinstance(result, dict) else None
        if isinstance(tools, list):
            names = self.seen.setdefault(server, set())
            if len(names) < MAX_SEEN_TOOLS:
                names.update(t["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str))

    def labels(self, call: McpCall) -> tuple[str, str]:
        """(server, tool) as metrics and the console's counts name them: configured servers,
        and tools a server listed or answered for; anything else `other`, so a client
        sending made-up names cannot grow /metrics or the store."""
        server = call.server if call.server is not None and call.server in self.servers else OTHER
        known = call.known or (call.tool is not None and call.tool in self.seen.get(server, ()))
        return server, call.tool if known and server != OTHER and call.tool else OTHER

    def audit(self, scope: Scope, ctx: RequestContext, status: int, elapsed: float) -> None:
        """One log line, the metrics and the console's count of a tool call, whoever
        answered it (a refusal too). Arguments and results are logged only when the server
        says `log_arguments: true` and the request is not incognito."""
        call = ctx.mcp
        if call is None or call.method != "tools/call":
            return
        server, tool = self.labels(call)
        outcome = call.status or ("ok" if status < 400 else "refused")
        metrics.child(metrics.mcp_calls, server, tool, outcome).inc()
        metrics.child(metrics.mcp_latency, server, tool).observe(elapsed)
        who = ctx.identity.facts() if ctx.identity is not None else {}
        fields: dict[str, Any] = {
            "request_id": ctx.request_id, "key": who.get("key"), "user": who.get("user"), "team": who.get("team"),
            "server": call.server, "tool": call.tool, "status": outcome, "http_status": status,
            "latency_ms": round(elapsed * 1000, 2), "upstream_ms": round(ctx.upstream_s * 1000, 2), "cost_usd": ctx.cost_usd,
        }
        if call.log_arguments and not redacted(scope):
            params = ctx.body.get("params") if isinstance(ctx.body, dict) else None
            fields["arguments"] = params.get("arguments") if isinstance(params, dict) else None
            fields["result"] = call.result
        info_line("mcp_call", fields)
        if self.store is not None:
            day = dt.datetime.now(dt.UTC).date().isoformat()
            counted = [(CALLS_PREFIX + day, f"{who.get('key') or '-'}|{server}{SEPARATOR}{tool}|{outcome}", 1.0)]
            guard.spawn(self.store, self.store.incr(counted, CALLS_TTL_S), "mcp_count_failed", request_id=ctx.request_id)

    async def calls_today(self) -> list[dict[str, Any]]:
        """Today's tool calls per key and tool, by outcome (the console's MCP page)."""
        day = dt.datetime.now(dt.UTC).date().isoformat()
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for field_name, count in (await self.store.counters(CALLS_PREFIX + day)).items():
            key, _, rest = field_name.partition("|")
            tool, _, outcome = rest.rpartition("|")
            row = rows.setdefault((key, tool), {"key": None if key == "-" else key, "tool": tool, "calls": 0, "refused": 0, "failed": 0})
            row["calls"] += int(count)
            if outcome == "refused":
                row["refused"] += int(count)
            elif outcome in ("failed", "timeout", "error"):
                row["failed"] += int(count)
        return sorted(rows.values(), key=lambda r: (-r["calls"], str(r["key"]), r["tool"]))

    def price(self, server: str, tool: str) -> float | None:
        """gateway.yaml's price of one call of `tool` (the budget middleware asks)."""
        found = self.servers.get(server)
        return found.price(tool) if found is not None else None

    def idempotent(self, server: str, tool: str) -> bool:
        """Does gateway.yaml declare `tool` of `server` idempotent (the cache may keep it)?"""
        found = self.servers.get(server)
        return found is not None and any(fnmatchcase(tool, glob) for glob in found.idempotent)

    # -- sessions ----------------------------------------------------------------------------
    async def open_session(self, ctx: RequestContext, entry: dict[str, Any]) -> str:
        session = "lg-" + secrets.token_urlsafe(24)
        entry = {**entry, "key": owner_of(ctx)}
        await self.store.set(SESSION_PREFIX + session, orjson.dumps(entry), SESSION_TTL_S)
        self.remember(session, entry)
        return session

    def remember(self, session: str, entry: dict[str, Any]) -> None:
        if len(self.known) >= KNOWN_SESSIONS_MAX:
            self.known.clear()
        self.known[session] = entry

    async def session(self, ctx: RequestContext, session: str) -> dict[str, Any] | None:
        """The entry of a lockgate session id, when it belongs to the key asking."""
        entry = self.known.get(session)
        if entry is None:
            raw = await self.store.get(SESSION_PREFIX + session)
            if raw is None:
                return None
            try:
                entry = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return None
            if not isinstance(entry, dict):
                return None
            self.remember(session, entry)
        return entry if entry.get("key") == owner_of(ctx) else None

    async def forget(self, session: str) -> None:
        self.known.pop(session, None)
        await self.store.delete(SESSION_PREFIX + session)

    # -- upstream ------------------------------------------------------------------------------
    def upstream_headers(self, server: McpServer, scope: Scope, upstream_session: str | None, **overrides: str) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        for name, value in scope.get("headers", ()):
            text = name.decode("latin-1")
            if text in FORWARDED or text.startswith(PARAM_HEADER):
                headers[text] = value.decode("latin-1")
        headers.update(overrides)
        if upstream_session:
            headers[SESSION_HEADER] = upstream_session
        headers.update(server.headers)  # lockgate's credentials, last: a client cannot replace them
        return headers

    async def send_upstream(self, ctx: RequestContext, server: McpServer, method: str, headers: dict[str, str], body: bytes,
                            silence_s: float | None = None) -> Any:
        started = time.perf_counter()
        try:
            return await self.client.send(UpstreamRequest(server.url, headers, body, method), silence_s or server.timeout_s)
        finally:
            ctx.upstream_s += time.perf_counter() - started

    async def exchange(self, ctx: RequestContext, server: McpServer, scope: Scope, message: dict[str, Any],
                       upstream_session: str | None) -> tuple[Any, str | None]:
        """One request to `server`, its whole answer read (bounded): (the JSON-RPC
        response, the upstream's session id)."""
        headers = self.upstream_headers(server, scope, upstream_session, **{"mcp-method": str(message.get("method"))})
        response = await self.send_upstream(ctx, server, "POST", headers, orjson.dumps(message))
        try:
            session = response.headers.get(SESSION_HEADER)
            if response.status >= 400:
                await response.read(64 * 1024)
                return {"error": {"code": -32603, "message": f"answered HTTP {response.status}"}, "status": response.status}, session
            body = await response.read(server.max_response_bytes)
            return first_response(body, (response.content_type or "").lower()), session
        finally:
            response.close()

    # -- /mcp/{name} -------------------------------------------------------------------------
    async def serve_one(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.guarded(self.relay_one, scope, receive, send)

    async def serve_all(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.guarded(self.aggregate, scope, receive, send)

    async def guarded(self, handler: Any, scope: Scope, receive: Receive, send: Send) -> None:
        """A store that fails (sessions live there) is a JSON-RPC error, never a 500."""
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await handler(scope, receive, watched)
        except self.store.errors as exc:
            log.warning("mcp_store_failed", error=type(exc).__name__)
            ctx = get_context(scope)
            if started or ctx.mcp is None:
                raise
            await fail(send, ctx.mcp, 503, "lockgate's store is unavailable: try again shortly.", "store_unavailable")

    async def relay_one(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx, receive = await mcp_request(scope, receive)
        assert ctx is not None and ctx.mcp is not None  # the route is an MCP path
        call = ctx.mcp
        server = self.servers.get(call.server or "")
        if server is None:
            await fail(send, call, 404, f"There is no MCP server `{call.server}`.", "mcp_server_not_found", "refused")
            return
        call.log_arguments = server.log_arguments
        identity = ctx.identity
        if identity is not None and not allows_server(identity.mcp, server.name):
            await fail(send, call, 403, f"This API key may not use the MCP server `{server.name}`.", "server_not_allowed", "refused")
            return
        method = scope["method"]
        if method not in ("POST", "GET", "DELETE"):
            await fail(send, call, 405, "MCP's Streamable HTTP takes POST, GET and DELETE.", "method_not_allowed", "refused")
            return
        if method == "POST" and call.method is None:
            await not_jsonrpc(ctx, call, send)
            return
        if call.method == "tools/call" and not server.exposes(call.tool or ""):
            await fail(send, call, 400, f"Unknown tool: `{call.tool}`.", "unknown_tool", "refused")
            return
        if call.method == "tools/call" and identity is not None and not allows_tool(identity.mcp, server.name, call.tool or ""):
            await fail(send, call, 403, f"This API key may not call the tool `{call.tool}`.", "tool_not_allowed", "refused")
            return
        given = header(scope, b"mcp-session-id")
        upstream_session = None
        if given is not None:
            entry = await self.session(ctx, given)
            if entry is None or entry.get("server") != server.name:
                await fail(send, call, 404, "Session not found: start a new one with initialize.", "session_not_found", "refused")
                return
            upstream_session = entry.get("upstream")
        headers = self.upstream_headers(server, scope, upstream_session)
        if method == "DELETE":
            await self.close_one(ctx, server, headers, send, given)
            return
        body = ctx.body_bytes() if method == "POST" else b""
        try:
            response = await self.send_upstream(ctx, server, method, headers, body, STREAM_SILENCE_S if method == "GET" else None)
        except UpstreamError as exc:
            await self.upstream_failed(send, call, server, exc)
            return
        session_out = given
        try:
            upstream_new = response.headers.get(SESSION_HEADER)
            if given is None and upstream_new and response.status < 400:
                session_out = await self.open_session(ctx, {"server": server.name, "upstream": upstream_new})
            keep = server.exposes if call.method == "tools/list" and server.tools is not None else None
            await self.relay(ctx, call, server, response, send, session_out, keep, stream=method == "GET")
        finally:
            response.close()

    async def close_one(self, ctx: RequestContext, server: McpServer, headers: dict[str, str], send: Send, session: str | None) -> None:
        if session is None:
            await fail(send, ctx.mcp or McpCall(server.name, None), 400, "DELETE needs an Mcp-Session-Id.", "invalid_request", "refused")
            return
        await self.forget(session)
        try:
            response = await self.send_upstream(ctx, server, "DELETE", headers, b"")
            response.close()
        except UpstreamError:
            pass  # the session is gone here; the server's own ends with its idle timeout
        await answer(send, 200, None)

    async def upstream_failed(self, send: Send, call: McpCall, server: McpServer, exc: UpstreamError) -> None:
        log.warning("mcp_upstream_failed", server=server.name, failure=exc.kind)
        if isinstance(exc, UpstreamTimeout):
            await fail(send, call, 504, f"The MCP server `{server.name}` did not answer within {server.timeout_s:g}s.", "mcp_timeout", "timeout")
        else:
            await fail(send, call, 502, f"The MCP server `{server.name}` could not be reached.", "mcp_unreachable")

    async def relay(self, ctx: RequestContext, call: McpCall, server: McpServer, response: Any, send: Send,
                    session: str | None, keep: Any = None, stream: bool = False) -> None:
        """The upstream's answer, as it comes (an SSE stream event by event), checked to
        be JSON-RPC and cut off past the size limit."""
        status = response.status
        content_type = (response.content_type or "").lower()
        session_headers = [(b"mcp-session-id", session.encode())] if session else []
        if status == 202:
            await answer(send, 202, None, session)
            return
        if status >= 400:
            try:
                body = await response.read(64 * 1024)
            except UpstreamError:
                body = b""
            message = first_response(body, content_type) if content_type.startswith("application/json") else None
            if status == 404 and call.method != "initialize":
                await fail(send, call, 404, "Session not found: start a new one with initialize.", "session_not_found", "error")
            elif isinstance(message, dict) and isinstance(message.get("error"), dict) and status < 500 and status not in (401, 403):
                call.status = "error"
                await send_json(send, status, {"jsonrpc": "2.0", "id": call.id, "error": message["error"]}, session_headers)
            else:
                # 401/403: the server refused lockgate's own credentials; they are not the client's to see
                await fail(send, call, 502, f"The MCP server `{server.name}` answered HTTP {status}.", "mcp_upstream_error")
            return
        if content_type.startswith("text/event-stream"):
            await self.relay_stream(call, server, response, send, session_headers, keep, stream)
            return
        if not content_type.startswith("application/json"):
            await fail(send, call, 502, f"The MCP server `{server.name}` answered something that is not JSON-RPC.", "mcp_bad_answer")
            return
        try:
            body = await response.read(server.max_response_bytes)
        except UpstreamTooLarge:
            await fail(send, call, 502, f"The MCP server `{server.name}`'s answer is larger than {server.max_response_bytes} bytes.", "mcp_answer_too_large")
            return
        except UpstreamError as exc:
            await self.upstream_failed(send, call, server, exc)
            return
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError:
            message = None
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            await fail(send, call, 502, f"The MCP server `{server.name}` answered something that is not JSON-RPC.", "mcp_bad_answer")
            return
        note_outcome(call, message)
        if call.method == "tools/list":
            self.note_tools(server.name, message)
        if keep is not None:
            message = filter_listing(message, keep)
            body = orjson.dumps(message)
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *session_headers]})
        await send({"type": "http.response.body", "body": body})

    async def relay_stream(self, call: McpCall, server: McpServer, response: Any, send: Send,
                           session_headers: list[tuple[bytes, bytes]], keep: Any, stream: bool) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache, no-transform"), (b"x-accel-buffering", b"no"), *session_headers]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        buffer = bytearray()
        total = 0
        limit = server.max_response_bytes
        problem = None
        answered = False
        chunks = response.iter_bytes()
        try:
            async for chunk in chunks:
                total += len(chunk)
                buffer += chunk
                if len(buffer) > limit or (not stream and total > limit):
                    problem = f"The MCP server `{server.name}`'s answer is larger than {limit} bytes: cut off."
                    break
                out = []
                for event in sse_events(buffer):
                    data = event_data(event)
                    if data:
                        try:
                            message = orjson.loads(data)
                        except orjson.JSONDecodeError:
                            message = None
                        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
                            problem = f"The MCP server `{server.name}` sent an event that is not JSON-RPC: cut off."
                            break
                        answered = note_outcome(call, message) or answered
                        if call.method == "tools/list":
                            self.note_tools(server.name, message)
                        if keep is not None:
                            event = b"event: message\r\ndata: " + orjson.dumps(filter_listing(message, keep)) + b"\r\n\r\n"
                    out.append(event)
                if answered and not stream and not problem:
                    # the call's answer ends the client's stream at once (the spec's server SHOULD
                    # close it then), so its connection is free for the next call
                    await send({"type": "http.response.body", "body": b"".join(out)})
                    await drain(chunks)
                    return
                if out:
                    await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
                if problem:
                    break
        except UpstreamError as exc:
            problem = f"The MCP server `{server.name}`'s stream broke off ({exc.kind})."
            call.status = "timeout" if isinstance(exc, UpstreamTimeout) else "failed"
        if problem is not None:
            log.warning("mcp_answer_cut", server=server.name, reason=problem)
            call.status = call.status if call.status in ("timeout", "failed") else "failed"
            if call.id is not None and not stream:
                error = orjson.dumps(error_body(call.id, 502, problem, "mcp_bad_answer"))
                await send({"type": "http.response.body", "body": b"event: message\r\ndata: " + error + b"\r\n\r\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    # -- /mcp ---------------------------------------------------------------------------------------
    async def aggregate(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx, receive = await mcp_request(scope, receive)
        assert ctx is not None and ctx.mcp is not None
        call = ctx.mcp
        method = scope["method"]
        given = header(scope, b"mcp-session-id")
        entry = None
        if given is not None:
            entry = await self.session(ctx, given)
            if entry is None or not entry.get("aggregate"):
                await fail(send, call, 404, "Session not found: start a new one with initialize.", "session_not_found", "refused")
                return
        if method == "DELETE":
            await self.close_all(ctx, scope, send, given, entry)
            return
        if method != "POST":
            # no server-initiated stream on /mcp: each server's notifications come with its answers
            await fail(send, call, 405, "/mcp takes POST and DELETE (no server-initiated stream).", "method_not_allowed", "refused")
            return
        body = ctx.body if isinstance(ctx.body, dict) else None
        if call.method is None or body is None:
            await not_jsonrpc(ctx, call, send)
            return
        if call.id is None:
            await answer(send, 202, None)  # a notification: nothing to route (cancellation closes the call's stream)
            return
        params: dict[str, Any] = body["params"] if isinstance(body.get("params"), dict) else {}
        modern = self.modern(scope, params)
        if call.method == "initialize":
            await self.initialize(ctx, call, params, send)
        elif call.method == "server/discover":
            call.status = "ok"
            await send_json(send, 200, result(call, {"supportedVersions": list(MODERN_VERSIONS), "capabilities": {"tools": {"listChanged": False}},
                                                     "resultType": "complete", "cacheScope": "private", "ttlMs": 0,
                                                     "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "lockgate", "version": "1"}}}))
        elif call.method == "ping":
            call.status = "ok"
            await send_json(send, 200, result(call, {}), self.session_header(given))
        elif call.method == "tools/list":
            await self.list_all(ctx, call, scope, body, send, given, modern)
        elif call.method == "tools/call":
            await self.call_one(ctx, call, scope, {**body, "params": params}, send, given, modern)
        else:
            message = f"/mcp answers initialize, ping, tools/list and tools/call; for `{call.method}` use /mcp/{{server}}."
            await fail(send, call, 404, message, "method_not_found", "refused")

    @staticmethod
    def session_header(session: str | None) -> list[tuple[bytes, bytes]]:
        return [(b"mcp-session-id", session.encode())] if session else []

    @staticmethod
    def modern(scope: Scope, params: dict[str, Any]) -> bool:
        meta = params.get("_meta")
        return (header(scope, b"mcp-protocol-version") in MODERN_VERSIONS) or (isinstance(meta, dict) and meta.get(PROTOCOL_META) in MODERN_VERSIONS)

    async def initialize(self, ctx: RequestContext, call: McpCall, params: dict[str, Any], send: Send) -> None:
        asked = params.get("protocolVersion")
        version = asked if asked in HANDSHAKE_VERSIONS else HANDSHAKE_VERSIONS[-1]
        capabilities = params.get("capabilities") if isinstance(params.get("capabilities"), dict) else {}
        client_info = params.get("clientInfo") if isinstance(params.get("clientInfo"), dict) else {"name": "lockgate", "version": "1"}
        session = await self.open_session(ctx, {"aggregate": True, "version": version, "capabilities": capabilities, "client_info": client_info})
        call.status = "ok"
        await send_json(send, 200, result(call, {"protocolVersion": version, "capabilities": {"tools": {"listChanged": False}},
                                                 "serverInfo": {"name": "lockgate", "version": "1"}}), self.session_header(session))

    def usable(self, ctx: RequestContext) -> list[McpServer]:
        allow = ctx.identity.mcp if ctx.identity is not None else None
        return [server for server in self.servers.values() if allows_server(allow, server.name)]

    async def upstream_session(self, ctx: RequestContext, server: McpServer, scope: Scope, session: str | None, entry: dict[str, Any] | None,
                               fresh: bool = False) -> str | None:
        """The upstream session standing for lockgate's `session` at `server`, opened
        (initialize + initialized) the first time it is needed."""
        if session is None or entry is None:
            return None
        key = f"{SESSION_PREFIX}{session}:{server.name}"
        if not fresh:
            raw = await self.store.get(key)
            if raw is not None:
                return raw.decode()
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": entry.get("version"), "capabilities": entry.get("capabilities") or {}, "clientInfo": entry.get("client_info")}}
        message, upstream = await self.exchange(ctx, server, scope, init, None)
        if not isinstance(message, dict) or "result" not in message:
            raise UpstreamError("the server refused initialize")
        version = str(message["result"].get("protocolVersion") or entry.get("version"))
        headers = self.upstream_headers(server, scope, upstream, **{"mcp-protocol-version": version, "mcp-method": "notifications/initialized"})
        response = await self.send_upstream(ctx, server, "POST", headers, b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
        response.close()
        if upstream:
            await self.store.set(key, upstream.encode(), SESSION_TTL_S)
        return upstream

    async def list_all(self, ctx: RequestContext, call: McpCall, scope: Scope, body: dict[str, Any], send: Send, session: str | None, modern: bool) -> None:
        entry = await self.session(ctx, session) if session else None
        allow = ctx.identity.mcp if ctx.identity is not None else None

        async def listing(server: McpServer) -> list[dict[str, Any]]:
            tools: list[dict[str, Any]] = []
            cursor = None
            upstream = None if modern else await self.upstream_session(ctx, server, scope, session, entry)
            for _ in range(10):  # pages
                params = dict(body.get("params") or {}) if modern else {}
                params.pop("cursor", None)
                if cursor:
                    params["cursor"] = cursor
                message, _ = await self.exchange(ctx, server, scope, {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": params}, upstream)
                res = message.get("result") if isinstance(message, dict) else None
                self.note_tools(server.name, message)
                if not isinstance(res, dict) or not isinstance(res.get("tools"), list):
                    raise UpstreamError("the server's tools/list answer is not a list of tools")
                for tool in res["tools"]:
                    name = tool.get("name") if isinstance(tool, dict) else None
                    if isinstance(name, str) and server.exposes(name) and allows_tool(allow, server.name, name):
                        tools.append({**tool, "name": f"{server.name}{SEPARATOR}{tool['name']}"})
                cursor = res.get("nextCursor")
                if not isinstance(cursor, str) or not cursor:
                    break
            return tools

        async def bounded(server: McpServer) -> list[dict[str, Any]]:
            try:
                async with asyncio.timeout(server.timeout_s):
                    return await listing(server)
            except (UpstreamError, TimeoutError) as exc:
                log.warning("mcp_listing_failed", server=server.name, failure=getattr(exc, "kind", "timeout"))
                return []

        found = await asyncio.gather(*(bounded(server) for server in self.usable(ctx)))
        payload: dict[str, Any] = {"tools": [tool for tools in found for tool in tools]}
        if modern:
            payload.update(resultType="complete", cacheScope="private", ttlMs=0)
        call.status = "ok"
        await send_json(send, 200, result(call, payload), self.session_header(session))

    async def call_one(self, ctx: RequestContext, call: McpCall, scope: Scope, body: dict[str, Any], send: Send, session: str | None, modern: bool) -> None:
        server = self.servers.get(call.server or "")
        if server is None or call.tool is None or not server.exposes(call.tool):
            name = body["params"].get("name")
            text = "tools/call needs params.name."
            if isinstance(name, str):
                text = f"Unknown tool: `{name}` (tools on /mcp are named {{server}}{SEPARATOR}{{tool}})."
            await fail(send, call, 400, text, "unknown_tool", "refused")
            return
        call.log_arguments = server.log_arguments
        identity = ctx.identity
        if identity is not None and not allows_tool(identity.mcp, server.name, call.tool):
            await fail(send, call, 403, f"This API key may not call the tool `{call.label}`.", "tool_not_allowed", "refused")
            return
        entry = await self.session(ctx, session) if session else None
        message = {**body, "params": {**body["params"], "name": call.tool}}
        overrides = {"mcp-name": call.tool, "mcp-method": "tools/call"}
        for attempt in range(2):
            try:
                upstream = None if modern else await self.upstream_session(ctx, server, scope, session, entry, fresh=attempt > 0)
                if entry is not None and not modern:
                    overrides["mcp-protocol-version"] = str(entry.get("version"))
                headers = self.upstream_headers(server, scope, upstream, **overrides)
                response = await self.send_upstream(ctx, server, "POST", headers, orjson.dumps(message))
            except UpstreamError as exc:
                await self.upstream_failed(send, call, server, exc)
                return
            try:
                if response.status == 404 and upstream is not None and attempt == 0:
                    continue  # the server forgot its session (restarted): open a fresh one, once
                await self.relay(ctx, call, server, response, send, session)
                return
            finally:
                response.close()

    async def close_all(self, ctx: RequestContext, scope: Scope, send: Send, session: str | None, entry: dict[str, Any] | None) -> None:
        if session is None or entry is None:
            await fail(send, ctx.mcp or McpCall(None, None, aggregated=True), 400, "DELETE needs an Mcp-Session-Id.", "invalid_request", "refused")
            return
        for server in self.servers.values():
            key = f"{SESSION_PREFIX}{session}:{server.name}"
            raw = await self.store.get(key)
            if raw is None:
                continue
            await self.store.delete(key)
            try:
                response = await self.send_upstream(ctx, server, "DELETE", self.upstream_headers(server, scope, raw.decode()), b"")
                response.close()
            except UpstreamError:
                pass
        await self.forget(session)
        await answer(send, 200, None)


def owner_of(ctx: RequestContext) -> str | None:
    """Whose a session is: the key's id (None: no auth in front)."""
    return ctx.identity.key if ctx.identity is not None and ctx.identity.source == "auth" else None


def shown_url(url: str) -> str:
    """An MCP server's URL as the console shows it: no user info, query or fragment (where
    a credential could hide)."""
    scheme, _, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}://{host.rpartition('@')[2]}{slash}{path.split('?', 1)[0].split('#', 1)[0]}"


async def list_tools(server: McpServer, client: UpstreamClient) -> tuple[list[str], str | None]:
    """The tools `server` exposes now (the console's MCP page), or what went wrong."""
    names, problem = await probe(server, client, names=True)
    return (names if isinstance(names, list) else []), problem


async def probe(server: McpServer, client: UpstreamClient, *, names: bool = False) -> tuple[Any, str | None]:
    """`lockgate check --online`: does `server` answer initialize and tools/list? (the
    number of tools it lists, or what went wrong). Its credentials go to it alone."""
    ctx = RequestContext("check")
    scope: Scope = {"type": "http", "headers": []}
    relay = McpRelay((server,), client, None)  # type: ignore[arg-type]  # no sessions are kept
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": HANDSHAKE_VERSIONS[-1], "capabilities": {}, "clientInfo": {"name": "lockgate-check", "version": "1"}}}
    try:
        async with asyncio.timeout(server.timeout_s * 3):
            message, session = await relay.exchange(ctx, server, scope, init, None)
            if not isinstance(message, dict) or not isinstance(message.get("result"), dict):
                return None, f"initialize was not answered ({message.get('error', {}).get('message') if isinstance(message, dict) else 'not JSON-RPC'})"
            version = str(message["result"].get("protocolVersion") or HANDSHAKE_VERSIONS[-1])
            headers = relay.upstream_headers(server, scope, session, **{"mcp-protocol-version": version, "mcp-method": "notifications/initialized"})
            (await relay.send_upstream(ctx, server, "POST", headers, b'{"jsonrpc":"2.0","method":"notifications/initialized"}')).close()
            scope["headers"] = [(b"mcp-protocol-version", version.encode())]
            listed, _ = await relay.exchange(ctx, server, scope, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, session)
    except (UpstreamError, TimeoutError) as exc:
        return None, f"cannot reach it ({getattr(exc, 'kind', 'timeout')})"
    result = listed.get("result") if isinstance(listed, dict) else None
    if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
        return None, "tools/list was not answered with a list of tools"
    exposed = [str(t.get("name")) for t in result["tools"] if isinstance(t, dict) and server.exposes(str(t.get("name")))]
    return (sorted(exposed) if names else len(exposed)), None
