"""Streams, onthebench's way: the mock answers `stream: true` with 64 content deltas 20 ms
apart (bench/mock.py), and per target

- added time to first token and added inter-frame delay, at one stream at a time: each
  stream through the target is paired with the same stream straight to the mock, back to
  back (which goes first alternates); TTFT is the time from sending the request to the
  first content delta; the inter-frame figures are the target's gap percentile minus the
  direct gap percentile (both legs carry the mock's pace and the same timer jitter);
- streams sustained: concurrency doubling from 1; at each rung that many lanes (their
  starts spread over one stream's length) each run streams back to back on one kept-alive
  connection for the window; a rung holds when every stream got every delta (all 64,
  each index once), none errored and no gap between two deltas passed 10x the pace (in
  one of two windows: the second runs only when the first did not hold). The
  result is the last rung that held before one did not (or the top of the ladder, then a
  floor, not a ceiling). Each rung also records how far the streams fell behind the mock's
  pace (a stream's first-to-last delta span over 63 paces: 1.0 is on pace), which the gate
  does not judge but the reader may.

The client is raw asyncio (uvloop when installed) so that it, not the target, is rarely
the limit; the direct row's own figure is the rig's ceiling, and a target that reaches
it is flagged as bounded by the rig.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from harness import percentile

DELTA = re.compile(rb'" w(\d+)"')  # the mock's content deltas, " w0".." w63", in any dialect's frame


@dataclass
class Lane:
    """How to ask one target for a stream."""

    url: str
    path: str = "/v1/chat/completions"
    headers: dict[str, str] = field(default_factory=dict)
    body: dict = field(default_factory=dict)

    def request(self, nonce: str) -> bytes:
        parts = urlsplit(self.url)
        body = dict(self.body)
        body["messages"] = [{"role": "user", "content": f"stream {nonce}"}]
        payload = json.dumps(body, separators=(",", ":")).encode()
        head = [f"POST {self.path} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}", "Content-Type: application/json",
                f"Content-Length: {len(payload)}", "Accept: text/event-stream",
                *(f"{k}: {v}" for k, v in self.headers.items())]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


@dataclass
class Record:
    ok: bool = False
    error: str = ""
    ttft_ms: float | None = None
    gaps_ms: list[float] = field(default_factory=list)
    deltas: int = 0
    complete: bool = False  # each index 0..chunks-1 seen exactly once
    span_ms: float | None = None  # first delta to last


class Conn(asyncio.Protocol):
    """One kept-alive connection running one streamed request at a time, parsed in
    data_received (no coroutine wake-up a frame): the status line and headers, then the
    body (chunked, by length, or to the close), each content delta stamped on arrival."""

    def __init__(self, lane: Lane) -> None:
        self.lane = lane
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] | None = None
        self.closed = True

    async def open(self) -> None:
        parts = urlsplit(self.lane.url)
        await asyncio.get_running_loop().create_connection(lambda: self, parts.hostname, parts.port)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.closed = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        if self.done and not self.done.done():
            if self.mode == "close" and self.head_done:
                self.finish()
            else:
                self.done.set_exception(ConnectionError(f"closed mid-answer ({exc})"))

    def close(self) -> None:
        if self.transport:
            self.transport.close()
        self.transport = None
        self.closed = True

    async def stream(self, chunks: int, timeout: float) -> Record:
        """One streamed request on this connection (opened first if needed)."""
        self.record = Record()
        try:
            if self.closed:
                await self.open()
            await asyncio.wait_for(self._stream(), timeout)
        except Exception as exc:  # noqa: BLE001 - any failure of the stream is the record's error
            self.record.ok = False
            self.record.error = self.record.error or f"{type(exc).__name__}: {exc}"[:200]
            self.close()
        record = self.record
        seen = self.seen
        record.deltas = len(seen)
        record.complete = sorted(seen) == list(range(chunks))
        if self.stamps:
            record.ttft_ms = (self.stamps[0] - self.start) * 1000
            record.gaps_ms = [(b - a) * 1000 for a, b in zip(self.stamps, self.stamps[1:], strict=False)]
            record.span_ms = (self.stamps[-1] - self.stamps[0]) * 1000
        return record

    async def _stream(self) -> None:
        assert self.transport is not None
        self.buffer = b""
        self.pending = b""
        self.head_done = False
        self.mode = ""
        self.left = 0
        self.keep = True
        self.seen: list[int] = []
        self.stamps: list[float] = []
        self.done = asyncio.get_running_loop().create_future()
        self.start = time.perf_counter()
        self.transport.write(self.lane.request(os.urandom(6).hex()))
        await self.done

    def data_received(self, data: bytes) -> None:
        if self.done is None or self.done.done():
            return
        now = time.perf_counter()
        self.buffer += data
        if not self.head_done:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buffer[:end].split(b"\r\n")
            self.buffer = self.buffer[end + 4:]
            self.head_done = True
            status = int(lines[0].split()[1])
            self.record.ok = status == 200
            if status != 200:
                self.record.error = f"HTTP {status}"
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip().lower()
            self.keep = headers.get(b"connection") != b"close"
            if headers.get(b"transfer-encoding") == b"chunked":
                self.mode = "chunked"
            elif b"content-length" in headers:
                self.mode, self.left = "length", int(headers[b"content-length"])
            else:
                self.mode, self.keep = "close", False
        if self.mode == "chunked":
            buffer, at, body = self.buffer, 0, []
            while True:
                line_end = buffer.find(b"\r\n", at)
                if line_end < 0:
                    break
                size = int(buffer[at:line_end].split(b";")[0], 16)
                if len(buffer) < line_end + 4 + size:
                    break
                if size == 0:
                    self.buffer = b""
                    self.feed(b"".join(body) + b"\n\n", now)
                    self.finish()
                    return
                body.append(buffer[line_end + 2:line_end + 2 + size])
                at = line_end + 4 + size
            self.buffer = buffer[at:]
            self.feed(b"".join(body), now)
        elif self.mode == "length":
            take, self.buffer = self.buffer[: self.left], self.buffer[self.left:]
            self.left -= len(take)
            self.feed(take, now)
            if self.left <= 0:
                self.feed(b"\n\n", now)
                self.finish()
        else:
            self.feed(self.buffer, now)
            self.buffer = b""

    def feed(self, data: bytes, now: float) -> None:
        if not data:
            return
        pending = self.pending + data
        cut = pending.rfind(b"\n\n")
        if cut < 0:
            self.pending = pending
            return
        self.pending = pending[cut + 2:]
        for match in DELTA.finditer(pending, 0, cut + 2):
            self.seen.append(int(match.group(1)))
            self.stamps.append(now)

    def finish(self) -> None:
        if self.mode == "close":
            self.feed(b"\n\n", time.perf_counter())
        if not self.keep:
            self.close()
        if self.done and not self.done.done():
            self.done.set_result(None)


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def run(coro):
    loop = new_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


# -- one stream at a time --------------------------------------------------------------------
async def _paired(target: Lane, direct: Lane, n: int, chunks: int, pace_s: float) -> dict:
    timeout = chunks * pace_s + 30
    through, straight = Conn(target), Conn(direct)
    added, gaps, direct_gaps, ttft, direct_ttft, failures = [], [], [], [], [], []
    for i in range(n + 3):  # the first 3 pairs warm both up
        order = (through, straight) if i % 2 else (straight, through)
        records = {}
        for conn in order:
            records[conn] = await conn.stream(chunks, timeout)
        a, b = records[through], records[straight]
        if not (a.ok and a.complete and a.ttft_ms is not None):
            failures.append(a.error or f"{a.deltas} of {chunks} deltas")
            continue
        if i < 3 or not (b.ok and b.complete and b.ttft_ms is not None):
            continue
        added.append(a.ttft_ms - b.ttft_ms)
        ttft.append(a.ttft_ms)
        direct_ttft.append(b.ttft_ms)
        gaps += a.gaps_ms
        direct_gaps += b.gaps_ms
    through.close()
    straight.close()
    if not added:
        return {"served": False, "failures": failures[:3]}
    return {
        "served": True,
        "pairs": len(added),
        "failures": len(failures),
        "ttft_p50_ms": round(percentile(ttft, 50), 3),
        "direct_ttft_p50_ms": round(percentile(direct_ttft, 50), 3),
        "added_ttft_p50_ms": round(percentile(added, 50), 3),
        "added_ttft_p99_ms": round(percentile(added, 99), 3),
        "gap_p50_ms": round(percentile(gaps, 50), 3),
        "gap_p99_ms": round(percentile(gaps, 99), 3),
        "added_gap_p50_ms": round(percentile(gaps, 50) - percentile(direct_gaps, 50), 3),
        "added_gap_p99_ms": round(percentile(gaps, 99) - percentile(direct_gaps, 99), 3),
    }


def paired(target: Lane, direct: Lane, n: int, chunks: int = 64, pace_s: float = 0.02) -> dict:
    return run(_paired(target, direct, n, chunks, pace_s))


# -- streams sustained -----------------------------------------------------------------------
async def _rung(lane: Lane, n: int, window_s: float, chunks: int, pace_s: float, stall_x: float) -> dict:
    length = chunks * pace_s
    started = time.perf_counter()
    deadline = started + length + window_s  # the last lane starts at `length`

    async def run_lane(i: int) -> list[Record]:
        await asyncio.sleep(i / n * length)
        conn, records = Conn(lane), []
        while True:
            record = await conn.stream(chunks, length + 60)
            records.append(record)
            if not (record.ok and record.complete) or time.perf_counter() >= deadline:
                break
        conn.close()
        return records

    lanes = await asyncio.gather(*(run_lane(i) for i in range(n)))
    elapsed = time.perf_counter() - started
    records = [r for lane_records in lanes for r in lane_records]
    bound = stall_x * pace_s * 1000
    failed = [r for r in records if not (r.ok and r.complete)]
    stalled = [r for r in records if r.gaps_ms and max(r.gaps_ms) > bound]
    gaps = [g for r in records for g in r.gaps_ms]
    ttfts = [r.ttft_ms for r in records if r.ttft_ms is not None]
    # how far behind the mock's own clock the streams ran: a stream's span over the (chunks - 1)
    # paces it takes at the mock; 1.0 is on pace (the gate is delivery and stalls, not this)
    stretch = [r.span_ms / ((chunks - 1) * pace_s * 1000) for r in records if r.span_ms and chunks > 1]
    return {
        "concurrency": n,
        "streams": len(records),
        "failed": len(failed),
        "stalled": len(stalled),
        "held": not failed and not stalled,
        "frames_per_s": round(sum(r.deltas for r in records) / elapsed, 1),
        "max_gap_ms": round(max(gaps), 2) if gaps else None,
        "ttft_p99_ms": round(percentile(ttfts, 99), 2) if ttfts else None,
        "stretch_p50": round(percentile(stretch, 50), 3) if stretch else None,
        "stretch_p99": round(percentile(stretch, 99), 3) if stretch else None,
        "first_error": failed[0].error or f"{failed[0].deltas} of {chunks} deltas" if failed else None,
    }


def sustained(lane: Lane, top: int, window_s: float, chunks: int = 64, pace_s: float = 0.02, stall_x: float = 10.0, tries: int = 2) -> dict:
    """Doubling from 1 to `top`; stops at the first rung that does not hold in any of
    `tries` windows (a rung that held is not run again: as onthebench's sweep, a concurrency
    qualifies when one of its windows does, so one scheduler hiccup does not end the climb)."""
    rungs = []
    n = 1
    while n <= top:
        for _ in range(max(1, tries)):
            rung = run(_rung(lane, n, window_s, chunks, pace_s, stall_x))
            rungs.append(rung)
            if rung["held"]:
                break
        if not rung["held"]:
            break
        n *= 2
    held = [r["concurrency"] for r in rungs if r["held"]]
    best = next((r for r in reversed(rungs) if r["held"]), None)
    return {
        "sustained": held[-1] if held else 0,
        "floor": bool(rungs) and rungs[-1]["held"] and rungs[-1]["concurrency"] >= top,  # the top of the ladder held: a floor, not a ceiling
        "frames_per_s": best["frames_per_s"] if best else None,
        "stretch_p99": best["stretch_p99"] if best else None,
        "rungs": rungs,
    }
