"""The throughput frontier, onthebench's way (GetBusbar/benchmarking engine/src/frontier.rs):
one closed-loop concurrency sweep (wrk at 1, 2, 4, ... connections, `windows` windows a
rung), read at each tail-latency bound: the most req/s of any window whose p99 was under
the bound and which failed no request. Monotone by construction (relaxing a bound only
adds windows to the set the maximum is taken over); on a tie the lowest concurrency wins;
a reading won at the top rung probed is a floor, not a ceiling, and says so.

The climb stops at the first rung where no window was clean (more connections cannot
un-fail requests), or where every window's p99 is at or past the last bound (no bound's
reading can come from further up), or at `top`.
"""

from __future__ import annotations

from collections.abc import Callable

BOUNDS_MS = (1, 5, 10, 50)


def sweep(probe: Callable[[int], dict], top: int = 512, windows: int = 1, bounds_ms: tuple[int, ...] = BOUNDS_MS) -> list[dict]:
    """`probe(connections)` runs one window and returns wrk's dict (rps, p99_ms, errors, ...)."""
    rungs: list[dict] = []
    c = 1
    while c <= top:
        runs = [probe(c) for _ in range(windows)]
        rungs += runs
        clean = [r for r in runs if r["requests"] and not r["errors"]]
        if not clean or all(r["p99_ms"] is None or r["p99_ms"] >= bounds_ms[-1] for r in clean):
            break
        c *= 2
    return rungs


def qualifies(rung: dict, bound_ms: float | None) -> bool:
    if not rung["requests"] or rung["errors"]:
        return False
    return bound_ms is None or (rung["p99_ms"] is not None and rung["p99_ms"] < bound_ms)


def read(rungs: list[dict], bound_ms: float | None) -> dict | None:
    best = None
    for rung in rungs:
        if qualifies(rung, bound_ms) and (best is None or rung["rps"] > best["rps"] or (rung["rps"] == best["rps"] and rung["connections"] < best["connections"])):
            best = rung
    if best is None:
        return None
    top = max(r["connections"] for r in rungs)
    return {"bound_ms": bound_ms, "rps": best["rps"], "connections": best["connections"], "p99_ms": best["p99_ms"], "floor": best["connections"] >= top}


def frontier(rungs: list[dict], bounds_ms: tuple[int, ...] = BOUNDS_MS) -> dict[str, dict | None]:
    """{"1": reading or None, ..., "none": the failure-only reading}."""
    readings = {str(b): read(rungs, b) for b in bounds_ms}
    readings["none"] = read(rungs, None)
    return readings
