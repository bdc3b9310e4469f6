"""Prometheus metrics, in a registry of lockgate's own, served at `/metrics`.

Each worker process counts its own requests (a scrape sees the worker that answered
it); spend and limits, which must agree across workers, live in the store instead.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

REGISTRY = CollectorRegistry(auto_describe=True)

requests = Counter("lockgate_requests", "Requests answered", ("path", "model", "status"), registry=REGISTRY)
latency = Histogram(
    "lockgate_request_duration_seconds",
    "Time from request to the end of the answer",
    ("path",),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
overhead = Histogram(
    "lockgate_overhead_seconds",
    "Time spent inside lockgate until the answer starts, waiting for the upstream excluded",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1),
    registry=REGISTRY,
)
tokens = Counter("lockgate_tokens", "Tokens reported by upstreams", ("model", "kind"), registry=REGISTRY)
spend = Counter("lockgate_spend_usd", "USD spent, priced from upstream usage", ("model",), registry=REGISTRY)
store_failures = Counter(
    "lockgate_store_failures", "Requests that met a failed or slow state store, by policy and what was done", ("policy", "outcome"), registry=REGISTRY
)
store_backlog = Gauge("lockgate_store_backlog", "Store writes (spend, releases) waiting for the store to answer again", registry=REGISTRY)
unpriced = Counter("lockgate_unpriced_requests", "Requests to models with no known price", registry=REGISTRY)
unmetered = Counter("lockgate_unmetered_answers", "Answers that reported no usage, charged and counted from an estimate", registry=REGISTRY)
upstream_failures = Counter("lockgate_upstream_failures", "Upstream timeouts, connection errors and broken streams", ("kind",), registry=REGISTRY)


class PolicyCollector:
    """Policy reloads and the unpriced-request count, read when scraped."""

    def collect(self):
        from lockgate.middleware import policy

        totals = policy.metrics()
        reloads = CounterMetricFamily("lockgate_policy_reloads", "Policy files reloaded", labels=("kind",))
        failures = CounterMetricFamily("lockgate_policy_reload_failures", "Policy edits refused as invalid", labels=("kind",))
        invalid = GaugeMetricFamily("lockgate_policy_invalid", "Policies whose file holds a refused edit right now", labels=("kind",))
        for kind, count in totals["reloads"].items():
            reloads.add_metric((kind,), count)
        for kind, count in totals["failures"].items():
            failures.add_metric((kind,), count)
        for kind, count in totals["invalid"].items():
            invalid.add_metric((kind,), count)
        yield reloads
        yield failures
        yield invalid


REGISTRY.register(PolicyCollector())


def render() -> bytes:
    return generate_latest(REGISTRY)
