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
  each index once), none errored and no gap between two deltas passed 10x the pace. The
  result is the last rung that held before one did not (or the top of the ladder, then a
  floor, not a ceiling).

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


class Conn:
    def __init__(self, lane: Lane) -> None:
        self.lane = lane
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        parts = urlsplit(self.lane.url)
        self.reader, self.writer = await asyncio.open_connection(parts.hostname, parts.port, limit=2**22)

    def close(self) -> None:
        if self.writer:
            self.writer.close()
        self.reader = self.writer = None

    async def stream(self, chunks: int, timeout: float) -> Record:
        """One streamed request on this connection (opened first if needed)."""
        record = Record()
        try:
            await asyncio.wait_for(self._stream(record, chunks), timeout)
        except Exception as exc:  # noqa: BLE001 - any failure of the stream is the record's error
            record.ok = False
            record.error = record.error or f"{type(exc).__name__}: {exc}"[:200]
            self.close()
        return record

    async def _stream(self, record: Record, chunks: int) -> None:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        reader = self.reader
        start = time.perf_counter()
        self.writer.write(self.lane.request(os.urandom(6).hex()))
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionError("closed before an answer")
        status = int(status_line.split()[1])
        headers: dict[bytes, bytes] = {}
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        seen: list[int] = []
        stamps: list[float] = []
        pending = b""

        def feed(data: bytes) -> None:
            nonlocal pending
            now = time.perf_counter()
            pending += data
            cut = pending.rfind(b"\n\n")
            if cut < 0:
                return
            complete, pending = pending[: cut + 2], pending[cut + 2:]
            for match in DELTA.finditer(complete):
                seen.append(int(match.group(1)))
                stamps.append(now)

        keep = headers.get(b"connection") != b"close"
        if headers.get(b"transfer-encoding") == b"chunked":
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await reader.readline()
                    break
                feed((await reader.readexactly(size + 2))[:-2])
        elif b"content-length" in headers:
            feed(await reader.readexactly(int(headers[b"content-length"])))
        else:
            while data := await reader.read(65536):
                feed(data)
            keep = False
        feed(b"\n\n")
        if not keep:
            self.close()
        record.deltas = len(seen)
        record.complete = sorted(seen) == list(range(chunks))
        if stamps:
            record.ttft_ms = (stamps[0] - start) * 1000
            record.gaps_ms = [(b - a) * 1000 for a, b in zip(stamps, stamps[1:])]
        record.ok = status == 200
        if status != 200:
            record.error = f"HTTP {status}"


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
    return {
        "concurrency": n,
        "streams": len(records),
        "failed": len(failed),
        "stalled": len(stalled),
        "held": not failed and not stalled,
        "frames_per_s": round(sum(r.deltas for r in records) / elapsed, 1),
        "max_gap_ms": round(max(gaps), 2) if gaps else None,
        "ttft_p99_ms": round(percentile(ttfts, 99), 2) if ttfts else None,
        "first_error": failed[0].error or f"{failed[0].deltas} of {chunks} deltas" if failed else None,
    }


def sustained(lane: Lane, top: int, window_s: float, chunks: int = 64, pace_s: float = 0.02, stall_x: float = 10.0) -> dict:
    """Doubling from 1 to `top`; stops at the first rung that does not hold."""
    rungs = []
    n = 1
    while n <= top:
        rung = run(_rung(lane, n, window_s, chunks, pace_s, stall_x))
        rungs.append(rung)
        if not rung["held"]:
            break
        n *= 2
    held = [r["concurrency"] for r in rungs if r["held"]]
    return {
        "sustained": held[-1] if held else 0,
        "floor": bool(rungs) and rungs[-1]["held"],  # the top of the ladder held: a floor, not a ceiling
        "frames_per_s": next((r["frames_per_s"] for r in rungs if held and r["concurrency"] == held[-1]), None),
        "rungs": rungs,
    }
