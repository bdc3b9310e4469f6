"""The fake upstream `make bench` measures against (onthebench's "mock": deterministic, dumb,
never the bottleneck): a raw asyncio HTTP/1.1 server, uvloop when installed, answering

- a chat completion (OpenAI's format) at once with the same small body, on any POST path
  but `/messages`, which answers Anthropic Messages' body (the peers' own lanes);
- `"stream": true` with an SSE stream: a role chunk and the first of `--chunks` content
  deltas (" w0" .. " w63" by default) at once, the rest `--pace-ms` apart (64 and 20 ms:
  onthebench's stream suite), then a finish chunk, a usage chunk and `[DONE]`; the deltas
  due in one millisecond are written by one timer callback (no task or sleep per
  stream), so thousands of streams cost little;
- any GET with 200 "ok" (health).

Keep-alive, `Content-Length` or chunked request bodies; pipelined requests are answered in
order.

    python bench/mock.py PORT [--chunks 64] [--pace-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import re

import orjson

CHAT = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello from the bench upstream"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
    }
)
MESSAGES = orjson.dumps(
    {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": "claude-bench",
        "content": [{"type": "text", "text": "hello from the bench upstream"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 6},
    }
)


def response(body: bytes, content_type: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: " + content_type + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body


CHAT_RESPONSE = response(CHAT)
MESSAGES_RESPONSE = response(MESSAGES)
OK_RESPONSE = response(b"ok", b"text/plain")
STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"


def sse(payload: dict) -> bytes:
    """One SSE event, framed as one chunk of a chunked body."""
    event = b"data: " + orjson.dumps(payload) + b"\n\n"
    return b"%x\r\n" % len(event) + event + b"\r\n"


def delta(content: dict, finish: str | None = None) -> dict:
    return {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench",
            "choices": [{"index": 0, "delta": content, "finish_reason": finish}]}


def stream_frames(chunks: int) -> tuple[bytes, list[bytes], bytes]:
    head = STREAM_HEAD + sse(delta({"role": "assistant", "content": ""}))
    deltas = [sse(delta({"content": f" w{i}"})) for i in range(chunks)]
    done = b"data: [DONE]\n\n"
    tail = (sse(delta({}, "stop"))
            + sse({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench", "choices": [],
                   "usage": {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}})
            + b"%x\r\n" % len(done) + done + b"\r\n" + b"0\r\n\r\n")
    return head, deltas, tail


STREAM_FLAG = re.compile(rb'"stream"\s*:\s*true')


class Wheel:
    """Deltas due in the same millisecond are written by one timer callback (libuv's timers
    have millisecond resolution anyway), so a thousand streams cost one callback a
    millisecond, not one a delta."""

    def __init__(self) -> None:
        self.due: dict[int, list[tuple[Mock, int, float]]] = {}

    def add(self, when: float, mock: Mock, i: int, start: float) -> None:
        slot = math.ceil(when * 1000)
        entries = self.due.get(slot)
        if entries is None:
            entries = self.due[slot] = []
            asyncio.get_running_loop().call_at(slot / 1000, self.fire, slot)
        entries.append((mock, i, start))

    def fire(self, slot: int) -> None:
        for mock, i, start in self.due.pop(slot, ()):
            mock.tick(i, start)


WHEEL = Wheel()


class Mock(asyncio.Protocol):
    frames: tuple[bytes, list[bytes], bytes] = stream_frames(64)
    pace_s: float = 0.02

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.streaming = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.streaming:
            self.serve()

    def serve(self) -> None:
        """Answer every complete request in the buffer, in order (a stream holds the rest)."""
        while self.transport and not self.streaming:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            rest = self.buffer[end + 4:]
            if b"transfer-encoding: chunked" in head:
                body, used = b"", 0
                while True:
                    line_end = rest.find(b"\r\n", used)
                    if line_end < 0:
                        return
                    size = int(rest[used:line_end].split(b";")[0], 16)
                    if len(rest) < line_end + 2 + size + 2:
                        return
                    body += rest[line_end + 2:line_end + 2 + size]
                    used = line_end + 2 + size + 2
                    if size == 0:
                        break
                self.buffer = rest[used:]
            else:
                match = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
                length = int(match.group(1)) if match else 0
                if len(rest) < length:
                    return
                body, self.buffer = rest[:length], rest[length:]
            method, path = head.split(b" ", 2)[:2]
            if method != b"post":
                self.transport.write(OK_RESPONSE)
            elif STREAM_FLAG.search(body):
                self.start_stream()
            elif path.split(b"?")[0].endswith(b"/messages"):
                self.transport.write(MESSAGES_RESPONSE)
            else:
                self.transport.write(CHAT_RESPONSE)

    def start_stream(self) -> None:
        """The head, the role chunk and the first delta at once (so time to first token is
        the gateway's alone, not a timer's); delta i at start + i x pace."""
        if self.transport is None:
            return
        head, deltas, _ = self.frames
        self.streaming = True
        self.transport.write(head + deltas[0])
        self.tick(0, asyncio.get_running_loop().time(), written=True)

    def tick(self, i: int, start: float, written: bool = False) -> None:
        """The schedule is the stream's own, so a late tick does not push the rest later."""
        if self.transport is None:
            return
        _, deltas, tail = self.frames
        if not written:
            self.transport.write(deltas[i])
        if i + 1 < len(deltas):
            WHEEL.add(start + (i + 1) * self.pace_s, self, i + 1, start)
            return
        self.transport.write(tail)
        self.streaming = False
        self.serve()


async def main(port: int, host: str = "127.0.0.1") -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Mock, host, port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--pace-ms", type=float, default=20.0)
    args = parser.parse_args()
    Mock.frames = stream_frames(args.chunks)
    Mock.pace_s = args.pace_ms / 1000
    try:
        import uvloop

        uvloop.run(main(args.port))
    except ImportError:
        asyncio.run(main(args.port))
