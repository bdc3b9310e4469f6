"""Log lines: batched per event-loop turn, never split or interleaved, same shape on
the fast access path as through structlog."""

from __future__ import annotations

import asyncio
import json
import os
import socket

from lockgate.kernel import logs


def records(sock: socket.socket) -> list[bytes]:
    """Each write the sink made, one record each (SOCK_SEQPACKET keeps the boundaries)."""
    out = []
    sock.setblocking(False)
    while True:
        try:
            out.append(sock.recv(1 << 20))
        except BlockingIOError:
            return out


def test_lines_of_one_turn_go_out_together_cut_at_line_boundaries() -> None:
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sink = logs.LineSink(writer.fileno())
    lines = [json.dumps({"n": i, "pad": "x" * (i % 90)}).encode() for i in range(300)]

    async def main() -> list[bytes]:
        for line in lines:
            sink.msg(line)
        assert records(reader) == [], "nothing is written before the turn ends"
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return records(reader)

    written = asyncio.run(main())
    assert b"".join(written) == b"".join(line + b"\n" for line in lines), "every line, in order, once"
    assert 1 < len(written) < len(lines), "one write serves many lines"
    for record in written:
        assert len(record) <= logs.PIPE_BUF and record.endswith(b"\n"), "a write is whole lines, at most PIPE_BUF"
    reader.close()
    writer.close()


def test_without_a_loop_a_line_is_written_at_once() -> None:
    read_fd, write_fd = os.pipe()
    sink = logs.LineSink(write_fd)
    sink.msg(b'{"event":"alone"}')
    assert os.read(read_fd, 100) == b'{"event":"alone"}\n'
    os.close(read_fd)
    os.close(write_fd)


def test_a_closed_stdout_never_fails_the_caller() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    sink = logs.LineSink(write_fd)
    sink.msg(b"lost")  # EPIPE: dropped, not raised
    os.close(write_fd)


def test_the_fast_access_line_has_structlogs_shape(monkeypatch) -> None:
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    monkeypatch.setattr(logs, "_sink", logs.LineSink(writer.fileno()))
    logs.configure("info")
    fields = {"request_id": "r1", "status": 200, "user": None, "latency_ms": 1.5, "fallback": ["a", "b"]}
    logs.get_logger("t").info("request", **fields)
    logs.info_line("request", dict(fields))
    slow, fast = (json.loads(line) for line in b"".join(records(reader)).splitlines())
    assert slow.pop("timestamp").endswith("Z") and fast.pop("timestamp").endswith("Z")
    assert list(slow) == list(fast) and slow == fast
    reader.close()
    writer.close()
