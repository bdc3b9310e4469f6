"""The one upstream HTTP client of a process.

It is aiohttp rather than httpx: on this project's benchmark machine a bare
passthrough served ~600 req/s through httpx's own pool, ~1,600 through httpx over
aiohttp's transport, and ~2,500 through aiohttp directly, and the gateway's budget
for all six middlewares is the difference. The surface is kept small so the client
can be swapped: `send` a request, get a status and an async stream of body bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import aiohttp

from lockgate.providers.base import UpstreamRequest

CONNECT_TIMEOUT_S = 10.0


class UpstreamError(Exception):
    kind = "upstream_error"


class UpstreamTimeout(UpstreamError):
    kind = "timeout"


class UpstreamConnectError(UpstreamError):
    """Nothing reached the upstream: it can be tried elsewhere."""

    kind = "connect_error"


class UpstreamBroken(UpstreamError):
    """The upstream answered, then broke off before its answer was complete."""

    kind = "broken"


class UpstreamTooLarge(UpstreamError):
    kind = "too_large"


class UpstreamRefused(UpstreamError):
    """The upstream answered a WebSocket handshake with an HTTP status instead."""

    kind = "refused"

    def __init__(self, status: int) -> None:
        super().__init__(f"the upstream refused the connection with status {status}")
        self.status = status


class UpstreamResponse:
    __slots__ = ("status", "_chunks", "_response", "_done", "content_type")

    def __init__(self, status: int, chunks: AsyncIterator[bytes], response: aiohttp.ClientResponse | None = None, content_type: str | None = None) -> None:
        self.status = status
        self._chunks = chunks
        self._response = response
        self._done = False
        self.content_type = content_type if response is None else response.headers.get("content-type")

    def header_items(self) -> list[tuple[str, str]]:
        """The answer's headers as the upstream sent them (none for an in-process answer)."""
        if self._response is None:
            return [("content-type", self.content_type)] if self.content_type else []
        return list(self._response.headers.items())

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive (decompressed a bounded piece at a time); timeouts
        and breaks raise `UpstreamError`s that name no library internals."""
        try:
            async for chunk in self._chunks:
                if chunk:
                    yield chunk
        except TimeoutError:
            raise UpstreamTimeout("the upstream stopped sending") from None
        except (aiohttp.ClientError, ConnectionError):
            raise UpstreamBroken("the upstream broke off its answer before it was complete") from None
        self._done = True

    async def read(self, max_bytes: int | None = None) -> bytes:
        """The whole body, refused past `max_bytes` (so a compressed bomb or an endless
        answer costs at most that much memory)."""
        parts = []
        size = 0
        async for chunk in self.iter_bytes():
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:
                raise UpstreamTooLarge(f"the upstream's answer is larger than {max_bytes} bytes")
            parts.append(chunk)
        return b"".join(parts)

    @property
    def headers(self) -> Mapping[str, str]:
        """The answer's headers (case-insensitive); none for an in-process answer."""
        return self._response.headers if self._response is not None else {}

    def close(self) -> None:
        """Hands the connection back for reuse once the answer was read whole; closes it
        when it was not (a cancelled or refused read), so no half-read answer is reused."""
        response, self._response = self._response, None
        if response is None:
            return
        if self._done:
            response.release()
        else:
            response.close()


class UpstreamClient:
    """One pooled aiohttp session, opened in the app's lifespan and closed with it."""

    def __init__(self, max_connections: int = 1000, max_per_host: int = 0) -> None:
        self._max_connections = max_connections
        self._max_per_host = max_per_host
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=self._max_per_host,
                ttl_dns_cache=300,
                keepalive_timeout=30,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
                timeout=aiohttp.ClientTimeout(total=None),
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def websocket(self, url: str, headers: dict[str, str], timeout_s: float) -> aiohttp.ClientWebSocketResponse:
        """A WebSocket to the upstream (the realtime API), open once its handshake is done;
        `timeout_s` bounds the handshake. Frames of any size are taken: the client's
        server limits what it sends, and the upstream is trusted with its own."""
        if self._session is None:
            await self.open()
        assert self._session is not None
        try:
            async with asyncio.timeout(timeout_s):
                return await self._session.ws_connect(url, headers=headers, max_msg_size=0, autoping=True, compress=0)
        except TimeoutError:
            raise UpstreamTimeout(f"no answer within {timeout_s:g}s") from None
        except aiohttp.WSServerHandshakeError as exc:
            raise UpstreamRefused(exc.status) from None
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or "connection failed"
            raise UpstreamConnectError(f"cannot connect to the upstream: {reason}") from None
        except (aiohttp.ClientError, ConnectionError):
            raise UpstreamConnectError("the upstream closed the connection without answering") from None

    async def send(self, request: UpstreamRequest, timeout_s: float) -> UpstreamResponse:
        """Sends the request; returns once the status line and headers are in.

        `timeout_s` bounds the wait for the answer to start and every silence after it.
        """
        if request.local is not None:
            try:
                status, chunks, *headers = await asyncio.wait_for(request.local(request), timeout_s)
            except TimeoutError:
                raise UpstreamTimeout(f"no answer within {timeout_s:g}s") from None
            return UpstreamResponse(status, chunks, content_type=headers[0].get("content-type") if headers else "application/json")
        if self._session is None:
            await self.open()
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(CONNECT_TIMEOUT_S, timeout_s), sock_read=timeout_s)
        # a body in pieces (an upload) is written as it is, each send its own pass over them
        data = request.body if isinstance(request.body, bytes) else pieces(request.body)
        try:
            response = await self._session.request(request.method, request.url, data=data, headers=request.headers, timeout=timeout, allow_redirects=False)
        except TimeoutError:
            raise UpstreamTimeout(f"no answer within {timeout_s:g}s") from None
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or "connection failed"
            raise UpstreamConnectError(f"cannot connect to the upstream: {reason}") from None
        except (aiohttp.ClientError, ConnectionError):
            raise UpstreamConnectError("the upstream closed the connection without answering") from None
        return UpstreamResponse(response.status, response.content.iter_any(), response)


async def pieces(parts: list) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
