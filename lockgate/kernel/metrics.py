"""Prometheus metrics, served at `/metrics`: lockgate's own `lockgate_*` names and
OpenTelemetry's GenAI metrics (`gen_ai_*`, the conventions' names with dots as
underscores and the unit as a suffix).

Under `lockgate serve --workers N` (N > 1) every worker writes its numbers to files in
one directory (prometheus-client's multiprocess mode, `PROMETHEUS_MULTIPROC_DIR`, which
`lockgate serve` sets up and removes), and a scrape answered by any worker adds up all
of them, the workers that exited included: a counter counts every request whichever
worker served it, and never goes down when a worker is replaced. Gauges say how they
combine: the store backlog is the sum over the workers alive, a policy's reload count
the highest any worker saw (each worker reloads every file itself). With one process the
same metrics live in memory.

Label values are never chosen freely by a client: routes and models are the gateway's
own or `other` (proxy/access.py), deployments and providers come from gateway.yaml.
"""

from __future__ import annotations

import glob
import os
from typing import Any, TypeVar

from prometheus_client import GC_COLLECTOR, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.metrics import MetricWrapperBase

MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")  # read once: prometheus-client chose its value class at import
REGISTRY = None if MULTIPROCESS_DIR else CollectorRegistry(auto_describe=True)
if REGISTRY is not None:
    # python_gc_{objects_collected,objects_uncollectable,collections}_total by generation:
    # what `lockgate serve`'s collector settings (gateway/server.py) leave it doing. One
    # process only: prometheus-client has no multiprocess form of it
    REGISTRY.register(GC_COLLECTOR)
M = TypeVar("M", bound=MetricWrapperBase)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# the GenAI conventions' advised boundaries
GENAI_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
GENAI_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
GENAI_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
GENAI_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_response_model")

requests = Counter("lockgate_requests", "Requests answered", ("path", "model", "status"), registry=REGISTRY)
latency = Histogram("lockgate_request_duration_seconds", "Time from request to the end of the answer", ("path",), buckets=LATENCY_BUCKETS, registry=REGISTRY)
overhead = Histogram(
    "lockgate_overhead_seconds",
    "Time spent inside lockgate until the answer starts, waiting for the upstream excluded",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1),
    registry=REGISTRY,
)
tokens = Counter("lockgate_tokens", "Tokens reported by upstreams", ("model", "kind"), registry=REGISTRY)
spend = Counter("lockgate_spend_usd", "USD spent, priced from upstream usage", ("model",), registry=REGISTRY)
cache_lookups = Counter("lockgate_cache_lookups", "Model requests the cache middleware looked at, by result", ("result",), registry=REGISTRY)
deployment_attempts = Counter(
    "lockgate_deployment_attempts",
    "Calls to each deployment, by outcome (failed: what counts toward its cooldown)",
    ("deployment", "outcome"),
    registry=REGISTRY,
)
deployment_latency = Histogram(
    "lockgate_deployment_first_byte_seconds",
    "Time to a deployment's answer headers, on calls that succeeded",
    ("deployment",),
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
store_failures = Counter(
    "lockgate_store_failures", "Requests that met a failed or slow state store, by policy and what was done", ("policy", "outcome"), registry=REGISTRY
)
store_backlog = Gauge(
    "lockgate_store_backlog", "Store writes (spend, releases) waiting for the store to answer again", registry=REGISTRY, multiprocess_mode="livesum"
)
unpriced = Counter("lockgate_unpriced_requests", "Requests to models with no known price", registry=REGISTRY)
unmetered = Counter("lockgate_unmetered_answers", "Answers that reported no usage, charged and counted from an estimate", registry=REGISTRY)
upstream_failures = Counter("lockgate_upstream_failures", "Upstream timeouts, connection errors and broken streams", ("kind",), registry=REGISTRY)
mcp_calls = Counter("lockgate_mcp_calls", "MCP tool calls, by server, tool and outcome (ok, tool_error, error, refused, failed, timeout)",
                    ("server", "tool", "status"), registry=REGISTRY)
mcp_latency = Histogram("lockgate_mcp_call_duration_seconds", "Time from an MCP tool call to the end of its answer", ("server", "tool"),
                        buckets=LATENCY_BUCKETS, registry=REGISTRY)
# every worker reloads every policy file itself: the highest count is the number of reloads
policy_reloads = Gauge("lockgate_policy_reloads_total", "Policy files reloaded", ("kind",), registry=REGISTRY, multiprocess_mode="max")
policy_failures = Gauge("lockgate_policy_reload_failures_total", "Policy edits refused as invalid", ("kind",), registry=REGISTRY, multiprocess_mode="max")
policy_invalid = Gauge(
    "lockgate_policy_invalid", "Policies whose file holds a refused edit right now", ("kind",), registry=REGISTRY, multiprocess_mode="livemax"
)

guard_findings = Counter(
    "lockgate_guard_findings", "What the guard's rules found, by rule, action and direction", ("rule", "action", "direction"), registry=REGISTRY
)
guard_errors = Counter(
    "lockgate_guard_errors", "Guard rules that could not decide (a detector's bug, a moderation call or webhook failed)", ("rule",), registry=REGISTRY
)
guard_latency = Histogram(
    "lockgate_guard_seconds",
    "Time the guard spent on a request (input: detectors, moderation and webhooks) or a whole answer (output)",
    ("direction",),
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
    registry=REGISTRY,
)

genai_duration = Histogram(
    "gen_ai_server_request_duration_seconds",
    "GenAI server request duration (OpenTelemetry gen_ai.server.request.duration)",
    (*GENAI_LABELS, "error_type"),
    buckets=GENAI_DURATION_BUCKETS,
    registry=REGISTRY,
)
genai_ttft = Histogram(
    "gen_ai_server_time_to_first_token_seconds",
    "Time to the first streamed chunk (OpenTelemetry gen_ai.server.time_to_first_token)",
    GENAI_LABELS,
    buckets=GENAI_TTFT_BUCKETS,
    registry=REGISTRY,
)
genai_tokens = Histogram(
    "gen_ai_client_token_usage",
    "Tokens used per request, by type (OpenTelemetry gen_ai.client.token.usage)",
    (*GENAI_LABELS, "gen_ai_token_type"),
    buckets=GENAI_TOKEN_BUCKETS,
    registry=REGISTRY,
)


def child(metric: M, *values: str) -> M:
    """`metric.labels(*values)`, remembered on the metric: the request path records about
    ten labelled samples, and prometheus-client checks and locks on every `labels()`
    (about a microsecond each). Label values are bounded sets (see above), so is this."""
    children: dict[tuple[str, ...], M] = metric.__dict__.setdefault("_lockgate_children", {})
    found = children.get(values)
    if found is None:
        found = children[values] = metric.labels(*values)
    return found


def record_policies(totals: dict[str, Any]) -> None:
    """The policy module's counts (middleware/policy.py `metrics()`), after each change."""
    for kind, count in totals["reloads"].items():
        policy_reloads.labels(kind).set(count)
    for kind, count in totals["failures"].items():
        policy_failures.labels(kind).set(count)
    for kind, count in totals["invalid"].items():
        policy_invalid.labels(kind).set(count)


def render() -> bytes:
    return generate_latest(collected())


def collected() -> CollectorRegistry:
    """What a scrape reads: this process's registry, or one adding up every worker's files."""
    if REGISTRY is not None:
        return REGISTRY
    assert MULTIPROCESS_DIR  # REGISTRY is None only then
    forget_dead_workers(MULTIPROCESS_DIR)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, MULTIPROCESS_DIR)
    return registry


def forget_dead_workers(path: str) -> None:
    """`live*` gauges of a worker that exited stop counting (prometheus-client leaves that
    to a `mark_process_dead` call nobody makes under uvicorn's supervisor)."""
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        pid = name.rsplit("_", 1)[1][:-3]
        if pid.isdigit() and not alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), path)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def snapshot() -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """Every sample by metric family name, across workers (the console's live figures)."""
    return {family.name: [(s.name, s.labels, s.value) for s in family.samples] for family in collected().collect()}
