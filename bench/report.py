"""`make bench`'s report: the figures derived from each target's raw measurements, the
issue's targets checked against them, results.md, results.png, and README's section."""

from __future__ import annotations

from pathlib import Path

BOUNDS = ("1", "5", "10", "50")
README_BEGIN = "<!-- bench:results begin (written by `make bench` and `bench/run.py --render`) -->"
README_END = "<!-- bench:results end -->"


def by_key(rows: list[dict]) -> dict[str, dict]:
    return {r["key"]: r for r in rows}


def derive(rows: list[dict]) -> None:
    """Added latency over direct (onthebench: the target's p99 at one connection minus
    direct's), ratios to the bare passthrough, memory per worker."""
    rows_by = by_key(rows)
    direct, bare = rows_by.get("direct", {}), rows_by.get("bare", {})
    for row in rows:
        if row.get("served") and row is not direct and "c1_p50_ms" in row and "c1_p50_ms" in direct:
            row["added_p50_ms"] = round(row["c1_p50_ms"] - direct["c1_p50_ms"], 3)
            row["added_p99_ms"] = round(row["c1_p99_ms"] - direct["c1_p99_ms"], 3)
        if row.get("rps_32") and bare.get("rps_32"):
            row["x_bare"] = round(row["rps_32"] / bare["rps_32"], 3)
        if row.get("rss_steady_mb") is not None:
            row["rss_steady_per_worker_mb"] = round(row["rss_steady_mb"] / max(1, row.get("workers") or 1), 1)
        sustained = row.get("streams_sustained") or {}
        rig = direct.get("streams_sustained") or {}
        if row is not direct and sustained and rig.get("sustained") is not None and not rig.get("floor"):
            # onthebench's mock-ceiling guardrail: as many streams as the rig itself carries is the rig's figure
            sustained["rig_bound"] = sustained["sustained"] >= rig["sustained"]


def fmt(value, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and digits == 0:
        return f"{value:,.0f}{suffix}"
    return f"{value:,.{digits}f}{suffix}" if isinstance(value, (int, float)) else str(value)


def reading(row: dict, bound: str) -> str:
    r = (row.get("frontier") or {}).get(bound)
    if not r:
        return "–" if row.get("frontier") else ""
    return f"{r['rps']:,.0f} @{r['connections']}" + ("+" if r["floor"] else "")


def targets(results: dict) -> list[tuple[str, str, bool | None]]:
    """Issue 24's targets, each (target, measured, met); met is None when a figure is missing."""
    rows = by_key(results["rows"])
    six, bare, portkey, litellm = rows.get("disk", {}), rows.get("bare", {}), rows.get("portkey", {}), rows.get("litellm", {})
    out: list[tuple[str, str, bool | None]] = []

    def check(text: str, measured: str, *values) -> None:
        out.append((text, measured, None if any(v is None for v in values[:-1]) else bool(values[-1])))

    a6, ab = six.get("added_p50_ms"), bare.get("added_p50_ms")
    check("all six on disk, one connection: added p50 ≤ the bare passthrough's + 0.35 ms",
          f"+{fmt(a6, 3)} ms vs +{fmt(ab, 3)} ms (difference {fmt(a6 - ab if None not in (a6, ab) else None, 3)})", a6, ab, a6 is not None and ab is not None and a6 <= ab + 0.35)
    a6, ab = six.get("added_p99_ms"), bare.get("added_p99_ms")
    check("all six on disk, one connection: added p99 ≤ the bare passthrough's + 1.0 ms",
          f"+{fmt(a6, 3)} ms vs +{fmt(ab, 3)} ms (difference {fmt(a6 - ab if None not in (a6, ab) else None, 3)})", a6, ab, a6 is not None and ab is not None and a6 <= ab + 1.0)
    x = six.get("x_bare")
    check("all six ≥ 0.45× the bare passthrough at 32 connections", f"{fmt(six.get('rps_32'), 0)} req/s = {fmt(x, 3)}×", x, x is not None and x >= 0.45)

    def at10(row: dict) -> float | None:
        r = (row.get("frontier") or {}).get("10")
        return r["rps"] if r else (0.0 if row.get("frontier") else None)

    def at50(row: dict) -> float | None:
        r = (row.get("frontier") or {}).get("50")
        return r["rps"] if r else None

    def versus(name: str, peer: dict, f6: float | None, fp: float | None, digits: int) -> str:
        text = f"{fmt(f6, 0)} vs {name} {fmt(fp, 0)} req/s ({fmt(f6 / fp if f6 is not None and fp else None, digits)}×)"
        if fp == 0:  # the peer never got under the bound: say so, and how the two compare at the loosest one
            w6, wp = at50(six), at50(peer)
            text += f"; {name} had no window under 10 ms; at p99 < 50 ms: {fmt(w6, 0)} vs {fmt(wp, 0)} ({fmt(w6 / wp if w6 and wp else None, 2)}×)"
        return text

    f6, fp, fl = at10(six), at10(portkey), at10(litellm)
    check("frontier at p99 < 10 ms (all six on disk) ≥ 2× Portkey's", versus("Portkey", portkey, f6, fp, 2),
          f6, fp, f6 is not None and fp is not None and (fp == 0 and f6 > 0 or fp > 0 and f6 >= 2 * fp))
    check("frontier at p99 < 10 ms (all six on disk) ≥ 10× LiteLLM's", versus("LiteLLM", litellm, f6, fl, 1),
          f6, fl, f6 is not None and fl is not None and (fl == 0 and f6 > 0 or fl > 0 and f6 >= 10 * fl))
    s6, sb = six.get("stream") or {}, bare.get("stream") or {}
    t6, tb = s6.get("added_ttft_p50_ms"), sb.get("added_ttft_p50_ms")
    check("streams, all six: added time to first token (p50) ≤ the bare passthrough's + 0.5 ms", f"+{fmt(t6, 3)} ms vs +{fmt(tb, 3)} ms", t6, tb,
          t6 is not None and tb is not None and t6 <= tb + 0.5)
    g6 = s6.get("added_gap_p99_ms")
    check("streams, all six: added inter-frame p99 ≤ 0.2 ms", f"+{fmt(g6, 3)} ms", g6, g6 is not None and g6 <= 0.2)
    sus = (six.get("streams_sustained") or {})
    n = sus.get("sustained")
    note = " (rig-bound: the mock and client's own ceiling)" if sus.get("rig_bound") else (" (the top of the ladder: a floor)" if sus.get("floor") else "")
    check(f"≥ 1,000 concurrent streams sustained with all six on {len(results['pinning']['gateway_cores'])} core(s)", f"{fmt(n, 0)}{note}", n, n is not None and n >= 1000)
    steady = six.get("rss_steady_per_worker_mb")
    check("memory, all six: steady ≤ 80 MB per worker", f"{fmt(steady, 1)} MB ({six.get('workers', 1)} worker(s))", steady, steady is not None and steady <= 80)
    idle, rec = six.get("rss_idle_mb"), six.get("rss_recovered_mb")
    check("memory, all six: recovered within 10% of idle", f"idle {fmt(idle, 1)} MB, recovered {fmt(rec, 1)} MB ({fmt((rec / idle - 1) * 100 if idle and rec else None, 1)}%)",
          idle, rec, idle is not None and rec is not None and rec <= idle * 1.10)
    return out


def markdown(results: dict) -> str:
    rows = results["rows"]
    m, pin = results["method"], results["pinning"]
    lines = [
        f"Measured {results['when']} on {results['machine']}.",
        f"Pinned with taskset: the gateway under test on core(s) {', '.join(map(str, pin['gateway_cores']))}; the mock, wrk and the stream client on"
        f" {', '.join(map(str, pin['other_cores']))}" + (f"; Redis: {pin['redis']}" if pin.get("redis") else "") + ".",
        f"{m['duration_s']:g} s a load window, {m['windows_per_rung']} window(s) a sweep rung; streams of {m['chunks']} deltas {m['pace_ms']:g} ms apart.",
        *([f"**{m['duration_s']:g} s windows: a check of the harness, not a measurement** (the method's windows are 10 s, on a quiet machine)."]
          if m["duration_s"] < 10 else []),
        "",
        "| target | added p50 ms (1 conn) | added p99 ms (1 conn) | req/s at 32 conns | × bare | p99 ms at 32 | CPU ms/req | req/s at p99 < 1 ms | < 5 ms | < 10 ms | < 50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if not r.get("served"):
            lines.append(f"| {r['label']} | not served: {str(r.get('evidence', ''))[:120].replace('|', '/')} |||||||||| ")
            continue
        c32 = r.get("c32") or {}
        lines.append(f"| {r['label']} | {fmt(r.get('added_p50_ms'), 3)} | {fmt(r.get('added_p99_ms'), 3)} | {fmt(r.get('rps_32'), 0)} | {fmt(r.get('x_bare'), 3)} |"
                     f" {fmt(c32.get('p99_ms'))} | {fmt(r.get('cpu_ms_per_request'), 3)} | " + " | ".join(reading(r, b) for b in BOUNDS) + " |")
    direct = by_key(rows).get("direct", {})
    lines += [
        "",
        f"Added latency: the target's p50/p99 at one connection minus direct's (direct: p50 {fmt(direct.get('c1_p50_ms'), 3)} ms, p99 {fmt(direct.get('c1_p99_ms'), 3)} ms);"
        " the translation lane's baseline is the OpenAI request straight to the mock, so its figure includes the translation."
        " Frontier: the most req/s of any sweep window (wrk, closed loop, 1, 2, 4, ... connections) whose p99 was under the bound with no failed request,"
        " `@N` the connections it came at, `+` where that was the top rung probed (a floor); – where no window qualified.",
    ]
    streamed = [r for r in rows if r.get("stream")]
    if streamed:
        lines += ["", "| streams | added TTFT p50 / p99 ms | added inter-frame p50 / p99 ms | streams sustained | frames/s there | pace stretch p99 there |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in streamed:
            s, sus = r["stream"], r.get("streams_sustained") or {}
            if not s.get("served"):
                lines.append(f"| {r['label']} | not served: {str(s.get('failures'))[:100].replace('|', '/')} | | | | |")
                continue
            n = sus.get("sustained")
            flag = " (rig)" if sus.get("rig_bound") else ("+" if sus.get("floor") else "")
            lines.append(f"| {r['label']} | {fmt(s['added_ttft_p50_ms'], 3)} / {fmt(s['added_ttft_p99_ms'], 3)} | {fmt(s['added_gap_p50_ms'], 3)} / {fmt(s['added_gap_p99_ms'], 3)} |"
                         f" {fmt(n, 0)}{flag} | {fmt(sus.get('frames_per_s'), 0)} | {fmt(sus.get('stretch_p99'), 2)} |")
        lines += ["", "Time to first token: from sending the request to the first content delta; each stream paired with one straight to the mock, back to back."
                  " Streams sustained: the largest concurrency, doubling from 1, at which every stream got every delta and no gap between deltas passed"
                  f" {m['stall_x']:g}× the pace; `+` the top of the ladder ({m['stream_top']}) held (a floor), `(rig)` as many as the rig carries straight to the mock."
                  " Pace stretch: a stream's first-to-last delta span over the mock's (1.00 on pace), the p99 over that rung's streams; not part of the gate."]
    mem = [r for r in rows if r.get("rss_idle_mb") is not None]
    if mem:
        lines += ["", "| memory (RSS of the process tree) | idle MB | steady MB (per worker) | growth MiB/min | peak MB | recovered MB | ready in s |", "|---|---:|---:|---:|---:|---:|---:|"]
        for r in mem:
            lines.append(f"| {r['label']} | {fmt(r.get('rss_idle_mb'), 1)} | {fmt(r.get('rss_steady_mb'), 1)} ({fmt(r.get('rss_steady_per_worker_mb'), 1)}) |"
                         f" {fmt(r.get('rss_growth_mib_per_min'))} | {fmt(r.get('rss_peak_mb'), 1)} | {fmt(r.get('rss_recovered_mb'), 1)} | {fmt(r.get('startup_s'))} |")
        lines += ["", f"Idle: the median over {m['idle_s']:g} s before the first request; steady: the median over the second half of the 32-connection load;"
                  f" recovered: {m['recovery_s']:g} s after it stopped."]
    lines += ["", "| target (issue 24) | measured | |", "|---|---|---|"]
    for text, measured, met in targets(results):
        lines.append(f"| {text} | {measured} | {'met' if met else 'not met' if met is False else 'not measured'} |")
    return "\n".join(lines) + "\n"


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if r.get("served") and r.get("rps_32")]
    if not rows:
        return
    color = {"upstream": "#888888", "reference": "#555555", "lockgate": "#2a7ab0", "peer": "#d9534f"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 0.45 * len(rows) + 4), gridspec_kw={"width_ratios": [1.2, 1]})
    markers = "osD^v<>ph*"
    for i, r in enumerate(rows):
        ys = [((r.get("frontier") or {}).get(b) or {}).get("rps") for b in BOUNDS]
        xs = [int(b) for b, y in zip(BOUNDS, ys, strict=True) if y]
        if xs:
            left.plot(xs, [y for y in ys if y], marker=markers[i % len(markers)], color=plt.get_cmap("tab10")(i % 10), label=r["label"][:60])
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xticks([int(b) for b in BOUNDS], [f"< {b} ms" for b in BOUNDS])
    left.set_xlabel("p99 bound (no failed request)")
    left.set_ylabel("most req/s (log scale)")
    left.set_title("throughput frontier")
    left.legend(fontsize=7, loc="best")
    names = [r["label"][:60] for r in rows][::-1]
    values = [r["rps_32"] for r in rows][::-1]
    right.barh(names, values, color=[color.get(r["kind"], "#2a7ab0") for r in rows][::-1])
    for i, v in enumerate(values):
        right.text(v, i, f" {v:,.0f}", va="center", fontsize=8)
    right.set_xscale("log")
    right.set_xlabel("req/s at 32 connections, log scale")
    right.tick_params(axis="y", labelsize=8)
    right.set_title("throughput at 32 connections")
    fig.suptitle(f"make bench, {results['when']}: gateway pinned to core(s) {', '.join(map(str, results['pinning']['gateway_cores']))}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def readme(path: Path, table: str) -> None:
    text = path.read_text()
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise SystemExit(f"{path} has no {README_BEGIN} ... {README_END} section to write into")
    path.write_text(text[: begin + len(README_BEGIN)] + "\n\n" + table + "\n" + text[end:])
