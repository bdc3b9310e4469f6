"""A hostile client against a real `lockgate serve`: bodies that trickle in forever (a
byte now and then, so no gap is ever long) are bounded by `server.body_timeout_s` as a
whole, answered 408 and closed; and huge multipart forms are refused before they cost
the event loop anything."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from tests.conftest import start_gateway

TRICKLERS = 100
GIVE_UP_S = 60.0  # only how long a broken server is waited for before the test fails


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    config = {
        "server": {"header_timeout_s": 1, "body_timeout_s": 1},
        "models": [{"name": "demo", "deployments": [{"provider": "mock"}]}],
    }
    gateway = start_gateway(config, tmp_path_factory.mktemp("hostile-server"))
    yield gateway
    gateway.stop()


class Trickler(asyncio.Protocol):
    """Keeps every byte the server sends, and learns when it closes. A stream reader would
    not do: a byte sent just as the server closes draws a reset, and `StreamReader.read`
    raises that reset before it hands over the answer that came in first (which, on a busy
    machine, the client has not read yet)."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def trickle(port: int) -> tuple[bytes, int]:
    """Declares a 1,000-byte body and sends a byte of it every 0.2 s (never a gap near the
    timeout) until the server answers or closes; returns all it answered and how many
    bytes went."""
    transport, client = await asyncio.get_running_loop().create_connection(Trickler, "127.0.0.1", port)
    transport.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    sent = 0
    try:
        while sent < 1000 and not client.received and not client.closed.done():
            try:
                await asyncio.wait_for(asyncio.shield(client.closed), 0.2)
            except TimeoutError:
                if not client.received:
                    transport.write(b" ")
                    sent += 1
        await client.closed  # the server closes after answering (the test bounds the wait)
        return bytes(client.received), sent
    finally:
        transport.close()


def test_a_body_that_trickles_forever_is_bounded_as_a_whole(gw):
    port = int(gw.url.rsplit(":", 1)[1])

    async def all_of_them() -> list[tuple[bytes, int]]:
        return await asyncio.wait_for(asyncio.gather(*(trickle(port) for _ in range(TRICKLERS))), GIVE_UP_S)

    answers = asyncio.run(all_of_them())
    for answer, sent in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), (answer[:60], sent)
        assert b"connection: close" in head.lower()
        error = orjson.loads(body)["error"]
        assert error["code"] == "request_timeout" and set(error) == {"message", "type", "code", "param"}
        assert sent < 1000, "answered before the body was complete"
    assert httpx.get(gw.url + "/health", timeout=5).status_code == 200
