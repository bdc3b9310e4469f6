"""Checks of `make bench`'s own machinery (not part of `make test`: run with
`.venv/bin/python -m pytest bench/test_harness.py`): the frontier's readings, and the
stream client against the mock over real loopback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import frontier  # noqa: E402
import streams  # noqa: E402
from harness import BENCH, Server, free_port  # noqa: E402


def rung(c: int, rps: float, p99: float, errors: int = 0) -> dict:
    return {"connections": c, "rps": rps, "p99_ms": p99, "errors": errors, "requests": 1000}


def test_frontier_reads_each_bound_from_one_sweep_monotone():
    rungs = [rung(1, 900, 0.8), rung(2, 1500, 3.0), rung(4, 2000, 9.0), rung(8, 2100, 40.0), rung(16, 2050, 90.0)]
    f = frontier.frontier(rungs)
    assert [f[b]["rps"] for b in ("1", "5", "10", "50")] == [900, 1500, 2000, 2100]
    assert f["none"]["rps"] == 2100
    assert f["50"]["connections"] == 8 and not f["50"]["floor"]


def test_a_window_with_a_failure_never_qualifies_and_ties_go_to_the_fewest_connections():
    rungs = [rung(1, 500, 0.5), rung(2, 700, 0.6, errors=1), rung(4, 500, 0.9)]
    f = frontier.frontier(rungs)
    assert f["1"]["rps"] == 500 and f["1"]["connections"] == 1
    assert frontier.read([rung(1, 100, 60.0)], 50) is None


def test_the_top_rung_winning_is_a_floor_and_the_climb_stops_past_the_last_bound():
    calls = []

    def probe(c: int) -> dict:
        calls.append(c)
        return rung(c, 100.0 * c, 10.0 * c)

    rungs = frontier.sweep(probe, top=512)
    assert calls == [1, 2, 4, 8]  # p99 80 ms at 8: no bound can be met further up
    assert frontier.read(frontier.sweep(lambda c: rung(c, c, 0.1), top=4), 1)["floor"]


@pytest.fixture(scope="module")
def mock():
    port = free_port()
    server = Server([sys.executable, str(BENCH / "mock.py"), str(port), "--chunks", "8", "--pace-ms", "5"], health=f"http://127.0.0.1:{port}/")
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_every_delta_of_a_stream_arrives_paced_on_a_kept_alive_connection(mock):
    async def two() -> list[streams.Record]:
        conn = streams.Conn(streams.Lane(mock, body={"model": "bench", "stream": True}))
        records = [await conn.stream(8, 10), await conn.stream(8, 10)]
        conn.close()
        return records

    for record in streams.run(two()):
        assert record.ok and record.complete and record.deltas == 8
        assert len(record.gaps_ms) == 7 and record.span_ms is not None and record.span_ms >= 30  # 7 paces of 5 ms, not all at once
        assert record.ttft_ms is not None and record.ttft_ms < 5  # the first delta comes with the head


def test_a_short_stream_is_not_complete_and_a_rung_with_one_fails(mock):
    record = streams.run(streams.Conn(streams.Lane(mock, body={"model": "bench", "stream": True})).stream(64, 10))
    assert record.ok and not record.complete and record.deltas == 8
    assert not streams.sustained(streams.Lane(mock, body={"model": "bench", "stream": True}), 2, 0.1, chunks=64, pace_s=0.005, tries=1)["rungs"][0]["held"]
    held = streams.sustained(streams.Lane(mock, body={"model": "bench", "stream": True}), 4, 0.1, chunks=8, pace_s=0.005)
    assert held["sustained"] == 4 and held["floor"]


def test_a_stall_past_the_bound_fails_the_rung(mock):
    # the mock's 5 ms pace against a 0.1 ms bound (stall_x 0.02 x 5 ms): every gap is a stall
    result = streams.sustained(streams.Lane(mock, body={"model": "bench", "stream": True}), 1, 0.1, chunks=8, pace_s=0.005, stall_x=0.02, tries=1)
    assert result["sustained"] == 0 and result["rungs"][0]["stalled"] == result["rungs"][0]["streams"] >= 1


def test_an_error_answer_is_an_error(mock):
    record = streams.run(streams.Conn(streams.Lane(mock, path="/nowhere", body={"model": "bench", "stream": False})).stream(8, 10))
    assert not record.complete and record.deltas == 0
