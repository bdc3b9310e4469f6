"""MCP servers for the tests, each run as its own process on loopback by uvicorn:

- `good`: an `mcp` SDK server (MCPServer, the SDK's FastMCP) over Streamable HTTP with
  sessions, behind a bearer token it checks (`MCP_UPSTREAM_TOKEN`): `add`, `echo`,
  `search_issues`, `delete_repo`, and `slow`, which reports progress with the time each
  notification was sent, so a client can prove it got each before the next was sent.
- `hostile`: speaks JSON-RPC well enough to be listed, then misbehaves per tool: an
  answer far past any limit (`huge`, `huge_stream`), an SSE event that is not JSON
  (`garbage`), a JSON answer that is not JSON-RPC (`not_jsonrpc`), silence (`silent`).

    python -m tests.fakes.mcp_servers good 8123
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import orjson
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

TOKEN = os.environ.get("MCP_UPSTREAM_TOKEN", "")


class RequireToken:
    """The upstream's own auth: lockgate must send its configured credentials."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and TOKEN:
            given = dict(scope["headers"]).get(b"authorization", b"").decode()
            if given != f"Bearer {TOKEN}":
                await JSONResponse({"error": "unauthorized"}, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def good_app() -> ASGIApp:
    return RequireToken(demo_server().streamable_http_app())


def demo_server() -> MCPServer:
    server = MCPServer("demo")
    calls: dict[str, int] = {}

    def counted(name: str) -> None:
        calls[name] = calls.get(name, 0) + 1

    @server.tool()
    def call_counts() -> dict[str, int]:
        """How often each tool ran (what was really relayed)."""
        return calls

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @server.tool()
    def echo(text: str) -> str:
        """Echo the text back."""
        return text

    @server.tool()
    def search_issues(query: str) -> list[str]:
        """Search issues."""
        counted("search_issues")
        return [f"issue about {query}"]

    @server.tool()
    def delete_repo(name: str) -> str:
        """Delete a repository (a tool a careful key is not given)."""
        counted("delete_repo")
        return f"deleted {name}"

    @server.tool()
    async def slow(steps: int, delay_s: float, ctx: Context) -> str:
        """Report progress `steps` times, `delay_s` apart; each message is the time it was sent."""
        for i in range(steps):
            await ctx.report_progress(i + 1, steps, message=repr(time.time()))
            await asyncio.sleep(delay_s)
        return "done"

    return server


# README "MCP": the middlewares around your own MCP server, no lockgate proxy involved
LIBRARY_KEYS = {"reader": "sk-notes-reader-0001", "spender": "sk-notes-spender-0002"}


def library_app() -> ASGIApp:
    import hashlib

    from lockgate import AuthMiddleware, BudgetMiddleware, ThrottleMiddleware

    def sha(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    app = demo_server().streamable_http_app(streamable_http_path="/mcp/notes")  # the server `notes`
    app = BudgetMiddleware(app, policy={"budgets": [{"key": "spender", "limit_usd": 0.5, "period": "total"}],
                                        "tool_prices": {"notes__echo": 0.25}})
    app = ThrottleMiddleware(app, policy={"limits": [{"per": "key", "match": {"mcp_tool": "notes__search_issues"}, "rpm": 2}]})
    return AuthMiddleware(app, policy={"keys": [
        {"id": "reader", "sha256": sha(LIBRARY_KEYS["reader"]), "mcp": {"notes": ["add", "search_*"]}},
        {"id": "spender", "sha256": sha(LIBRARY_KEYS["spender"]), "mcp": {"notes": "*"}},
    ]})


def hostile_app() -> ASGIApp:
    tools = [{"name": name, "inputSchema": {"type": "object"}} for name in ("huge", "huge_stream", "garbage", "not_jsonrpc", "silent")]

    async def mcp(request: Request) -> Response:
        body = orjson.loads(await request.body())
        method, rid = body.get("method"), body.get("id")
        if rid is None:
            return Response(status_code=202)
        if method == "initialize":
            return JSONResponse({"jsonrpc": "2.0", "id": rid, "result": {"protocolVersion": body["params"]["protocolVersion"], "capabilities": {"tools": {}},
                                                                        "serverInfo": {"name": "hostile", "version": "1"}}},
                                headers={"mcp-session-id": "hostile-session"})
        if method == "tools/list":
            return JSONResponse({"jsonrpc": "2.0", "id": rid, "result": {"tools": tools}})
        name = body["params"]["name"]
        if name == "huge":
            text = "x" * (4 * 1024 * 1024)
            return JSONResponse({"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": text}]}})
        if name == "not_jsonrpc":
            return JSONResponse({"hello": "world"})
        if name == "silent":
            await asyncio.sleep(3600)
        if name == "garbage":
            async def garbage() -> Any:
                yield b'event: message\r\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}\r\n\r\n'
                yield b"event: message\r\ndata: <html>this is not json</html>\r\n\r\n"
                yield b'event: message\r\ndata: {"jsonrpc":"2.0","id":' + orjson.dumps(rid) + b',"result":{"content":[]}}\r\n\r\n'
            return StreamingResponse(garbage(), media_type="text/event-stream")

        async def endless() -> Any:
            data = b'{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"' + b"y" * 16000 + b'"}}'
            chunk = b"event: message\r\ndata: " + data + b"\r\n\r\n"
            for _ in range(100_000):
                yield chunk
        return StreamingResponse(endless(), media_type="text/event-stream")

    return Starlette(routes=[Route("/mcp", mcp, methods=["POST"])])


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    app = {"good": good_app, "hostile": hostile_app, "library": library_app}[kind]()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
