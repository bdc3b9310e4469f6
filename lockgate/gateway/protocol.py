"""uvicorn's httptools protocol with the limits a gateway facing hostile clients needs,
which uvicorn does not set for httptools:

- `server.max_header_bytes`: the request line and headers together; past it the
  connection gets 431 at once, before the rest is read (a client cannot make the gateway
  parse megabytes of headers before its key is even checked);
- `server.header_timeout_s`: from a connection's first moment (or a request's first byte)
  to the end of its headers; a slow sender (slowloris) gets 408 and is closed;
- `server.body_timeout_s`: from the end of a request's headers to the end of its body,
  the whole read, not the longest silence (a client sending a byte now and then would
  otherwise hold a connection and a request for ever); 408 when the answer has not
  started yet, else the connection is closed.

The limits come from `gateway.yaml` through the app's lifespan state (`STATE_KEY`), which
uvicorn hands to every connection; without it the defaults apply. The answers are
OpenAI-shaped JSON and close the connection.

`LockgateWebSocketProtocol` is uvicorn's WebSocket protocol with a text message that is
not UTF-8 closed with 1007 (invalid data, RFC 6455 8.1) and one log line, where uvicorn
logs a traceback for every such frame a client cares to send.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from lockgate.gateway.config import ServerConfig
from lockgate.kernel.errors import error_body
from lockgate.kernel.logs import get_logger

STATE_KEY = "lockgate.server"
TICKER_KEY = "lockgate.deadlines"
TICK_S = 0.25  # how often deadlines are checked: a timeout fires up to this much late
INVALID_DATA = 1007
log = get_logger("lockgate.server")


class Ticker:
    """The deadlines of every connection of one server, checked every TICK_S by one timer."""

    def __init__(self) -> None:
        self.connections: set[Any] = set()
        self.timer: asyncio.TimerHandle | None = None

    def add(self, connection: Any) -> None:
        self.connections.add(connection)
        if self.timer is None:
            self.timer = connection.loop.call_later(TICK_S, self.tick, connection.loop)

    def discard(self, connection: Any) -> None:
        self.connections.discard(connection)

    def tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for connection in [c for c in self.connections if c.deadline and c.deadline <= now]:
            connection.deadline = 0.0
            connection.on_deadline()
        self.timer = loop.call_later(TICK_S, self.tick, loop) if self.connections else None


def refusal(status: int, message: str, code: str) -> bytes:
    body = orjson.dumps(error_body(message, "invalid_request_error", code))
    head = [
        STATUS_LINE[status],
        b"content-type: application/json\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
        b"connection: close\r\n\r\n",
    ]
    return b"".join(head) + body


class Refused(Exception):
    """Raised from a parser callback to stop parsing once the connection was answered."""


class LockgateProtocol(HttpToolsProtocol):
    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = app_state.get(STATE_KEY) or ServerConfig()
        self.max_header_bytes = limits.max_header_bytes
        self.header_timeout_s = limits.header_timeout_s
        self.body_timeout_s = limits.body_timeout_s
        self.header_bytes = 0
        self.refused = False
        # the deadline the ticker enforces (0: none) and what to do when it passes; a request
        # only stores two values, where a timer of its own would cost a heap push and a cancel
        self.deadline = 0.0
        self.on_deadline: Any = None
        self.ticker: Ticker = app_state.setdefault(TICKER_KEY, Ticker())

    # -- deadlines -----------------------------------------------------------------------
    def _arm(self, seconds: float, callback: Any) -> None:
        self.deadline = self.loop.time() + seconds
        self.on_deadline = callback

    def _disarm(self) -> None:
        self.deadline = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.ticker.add(self)
        self._arm(self.header_timeout_s, self._headers_too_slow)  # a connection that never sends a byte

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.ticker.discard(self)
        super().connection_lost(exc)

    def _refuse(self, status: int, message: str, code: str) -> None:
        self._disarm()
        self.refused = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app's own answer, if it comes, goes nowhere
            self.cycle.message_event.set()
        if not self.transport.is_closing():
            self.transport.write(refusal(status, message, code))
            self.transport.close()

    def _headers_too_slow(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self._refuse(408, f"The request's headers did not arrive within {self.header_timeout_s:g}s.", "request_timeout")

    def _body_too_slow(self) -> None:
        cycle = self.cycle
        if cycle is None or not cycle.more_body or cycle.response_complete:
            return
        if cycle.response_started:
            self.transport.close()
        else:
            self._refuse(408, f"The request body did not arrive within {self.body_timeout_s:g}s.", "request_timeout")

    # -- parsing -------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        """uvicorn's, with its plain-text 400 answered in OpenAI's shape, and silence once a
        limit has answered the connection."""
        if self.refused:
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except (httptools.HttpParserError, Refused):
            if not self.refused:
                self._refuse(400, "The request is not valid HTTP.", "invalid_http")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.header_bytes = 0
        self._arm(self.header_timeout_s, self._headers_too_slow)

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        self.header_bytes += size
        if self.header_bytes > self.max_header_bytes:
            self._refuse(431, f"The request's headers are larger than {self.max_header_bytes} bytes.", "request_headers_too_large")
            raise Refused

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.more_body and self._expects_body():
            self._arm(self.body_timeout_s, self._body_too_slow)

    def _expects_body(self) -> bool:
        for name, value in self.headers:
            if name == b"content-length":
                return value.strip() not in (b"", b"0")
            if name == b"transfer-encoding":
                return True
        return False

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()


class LockgateWebSocketProtocol(WebSocketsSansIOProtocol):
    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text" and not self.close_sent:
            data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
            if not is_utf8(data):
                self.frames = []
                log.warning("websocket_frame_refused", reason="a text message that is not UTF-8", close_code=INVALID_DATA)
                self.conn.send_close(INVALID_DATA, "text messages must be UTF-8")
                self.handle_parser_exception()
                return
            self.frames = [data]
        super().send_receive_event_to_app()


def is_utf8(data: bytes) -> bool:
    if data.isascii():  # realtime audio is base64 in JSON: ASCII, checked at memory speed
        return True
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True
