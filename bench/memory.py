"""Memory across a gateway process's life, onthebench's way: RSS of the gateway's whole
process tree (psutil), sampled

- idle: the median over a window on the freshly started process, before it serves a request;
- steady: under a fixed load (wrk at 32 connections), the median over the second half of
  the load window, with the growth rate over that half (MiB/min: a leak shows here even
  when the window is too short to see it settle);
- recovered: the RSS at the end of a recovery window after the load stops.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable

from harness import Server


class Sampler:
    def __init__(self, server: Server, interval: float = 0.2) -> None:
        self.server = server
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self.server.tree_rss_mb()
            if rss is not None:
                self.samples.append((time.monotonic(), rss))
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def idle(server: Server, seconds: float) -> float | None:
    with Sampler(server) as sampler:
        time.sleep(seconds)
    return round(statistics.median(s for _, s in sampler.samples), 1) if sampler.samples else None


def slope_mib_per_min(samples: list[tuple[float, float]]) -> float | None:
    if len(samples) < 3:
        return None
    xs = [t for t, _ in samples]
    ys = [m for _, m in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var * 60, 2) if var else None


def under_load(server: Server, load: Callable[[], dict], recovery_s: float) -> tuple[dict, dict]:
    """Runs `load` (blocking) while sampling, then samples the recovery window. Returns the
    load's own result and {steady_mb, growth_mib_per_min, peak_mb, recovered_mb}."""
    with Sampler(server) as sampler:
        began = time.monotonic()
        result = load()
        ended = time.monotonic()
        time.sleep(recovery_s)
    during = [(t, m) for t, m in sampler.samples if began <= t <= ended]
    second_half = [(t, m) for t, m in during if t >= began + (ended - began) / 2] or during
    after = [m for t, m in sampler.samples if t > ended]
    memory = {
        "steady_mb": round(statistics.median(m for _, m in second_half), 1) if second_half else None,
        "growth_mib_per_min": slope_mib_per_min(second_half),
        "peak_mb": round(max(m for _, m in during), 1) if during else None,
        "recovered_mb": round(after[-1], 1) if after else None,
        "load_s": round(ended - began, 1),
        "recovery_s": recovery_s,
    }
    return result, memory
