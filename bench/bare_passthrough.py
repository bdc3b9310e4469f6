"""The reference the issue measures lockgate against: a bare Starlette passthrough
with one aiohttp client session, no parsing, no policies, no logging. A request that
asks for a stream is answered as one, each upstream chunk forwarded as it comes.

    python bench/bare_passthrough.py PORT UPSTREAM_URL
"""

from __future__ import annotations

import contextlib
import sys

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

UPSTREAM = sys.argv[2] if len(sys.argv) > 2 else "http://127.0.0.1:9100"
session: aiohttp.ClientSession | None = None


async def chat(request: Request) -> Response:
    body = await request.body()
    if b'"stream":true' in body.replace(b" ", b""):
        upstream = await session.post(UPSTREAM + "/v1/chat/completions", data=body, headers={"content-type": "application/json"})

        async def relay():
            try:
                async for piece in upstream.content.iter_any():
                    yield piece
            finally:
                upstream.release()

        return StreamingResponse(relay(), status_code=upstream.status, media_type="text/event-stream")
    async with session.post(UPSTREAM + "/v1/chat/completions", data=body, headers={"content-type": "application/json"}) as upstream:
        return Response(await upstream.read(), status_code=upstream.status, media_type="application/json")


@contextlib.asynccontextmanager
async def lifespan(app):
    global session
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))
    yield
    await session.close()


app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])], lifespan=lifespan)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
