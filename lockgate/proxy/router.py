"""Which deployment serves a request: load balancing and cooldown.

Each model name owns a `Balancer`. `order` returns the deployments to try, the
strategy's pick first, cooled-down ones left out (unless all are, when the one that
cools down soonest is still tried rather than failing outright).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import random
import time
from collections.abc import Sequence
from typing import Protocol

from lockgate.kernel import metrics
from lockgate.providers.base import Deployment
from lockgate.proxy.models import ModelConfig

LATENCY_ALPHA = 0.2  # weight of the newest sample in the moving average


class Cooldowns(Protocol):
    """Where deployment failure streaks and cooldowns are kept (shared through the store
    when one is mounted, per process otherwise)."""

    def cooling(self, dep_id: str, now: float) -> float: ...
    def failed(self, dep_id: str, threshold: int, cooldown_s: float, now: float) -> None: ...
    def succeeded(self, dep_id: str) -> None: ...


class LocalCooldowns:
    def __init__(self) -> None:
        self.streaks: dict[str, int] = {}
        self.until: dict[str, float] = {}

    def cooling(self, dep_id: str, now: float) -> float:
        """Seconds left of this deployment's cooldown (0 when available)."""
        until = self.until.get(dep_id)
        if until is None:
            return 0.0
        if until <= now:
            del self.until[dep_id]
            return 0.0
        return until - now

    def failed(self, dep_id: str, threshold: int, cooldown_s: float, now: float) -> None:
        streak = self.streaks.get(dep_id, 0) + 1
        if streak >= threshold:
            self.until[dep_id] = now + cooldown_s
            streak = 0
        self.streaks[dep_id] = streak

    def succeeded(self, dep_id: str) -> None:
        if self.streaks.get(dep_id):
            self.streaks[dep_id] = 0


class SharedCooldowns(LocalCooldowns):
    """Cooldowns published to the store and read back every `SYNC_S`, so a deployment
    one process found failing is skipped by every worker and replica. Failure streaks
    stay per process; only the verdict is shared. The store keeps wall-clock times."""

    SYNC_S = 1.0

    def __init__(self, store, dep_ids: list[str]) -> None:
        super().__init__()
        self.store = store
        self.dep_ids = dep_ids
        self._pending: set[asyncio.Task] = set()

    def failed(self, dep_id: str, threshold: int, cooldown_s: float, now: float) -> None:
        before = self.until.get(dep_id)
        super().failed(dep_id, threshold, cooldown_s, now)
        if self.until.get(dep_id) != before:
            wall_until = time.time() + cooldown_s
            task = asyncio.get_running_loop().create_task(self.store.set(f"cooldown:{dep_id}", repr(wall_until).encode(), cooldown_s))
            self._pending.add(task)
            task.add_done_callback(self._published)

    def _published(self, task: asyncio.Task) -> None:
        self._pending.discard(task)
        if not task.cancelled():
            # retrieved, not raised: with the store down this process still skips the
            # deployment, and the others hear of it once the store is back
            task.exception()

    async def sync(self) -> None:
        for dep_id in self.dep_ids:
            value = await self.store.get(f"cooldown:{dep_id}")
            if value is None:
                continue
            remaining = float(value) - time.time()
            if remaining > 0:
                until = time.monotonic() + remaining
                self.until[dep_id] = max(self.until.get(dep_id, 0.0), until)

    async def run(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # blind: a store hiccup must not stop the loop
                await self.sync()
            await asyncio.sleep(self.SYNC_S)


class Balancer:
    def __init__(self, model: ModelConfig, cooldowns: Cooldowns) -> None:
        self.model = model
        self.deployments = model.deployments
        self.cooldowns = cooldowns
        self.in_flight = {d.id: 0 for d in self.deployments}
        self.latency = {d.id: 0.0 for d in self.deployments}
        self._current = {d.id: 0.0 for d in self.deployments}  # smooth weighted round robin state
        self._tick = 0
        self._pick = getattr(self, "_pick_" + model.balance)

    def order(self, sticky_key: str = "") -> list[Deployment]:
        now = time.monotonic()
        available = [d for d in self.deployments if not self.cooldowns.cooling(d.id, now)]
        if not available:
            soonest = min(self.deployments, key=lambda d: self.cooldowns.cooling(d.id, now))
            return [soonest]
        if len(available) == 1:
            return available
        first = self._pick(available, sticky_key)
        return [first] + [d for d in available if d is not first]

    def started(self, dep: Deployment) -> None:
        self.in_flight[dep.id] += 1

    def finished(self, dep: Deployment, ok: bool, latency_s: float | None = None, counted: bool = True) -> None:
        self.in_flight[dep.id] -= 1
        if not counted:
            return
        metrics.child(metrics.deployment_attempts, dep.id, "ok" if ok else "failed").inc()
        if ok and latency_s is not None:
            metrics.child(metrics.deployment_latency, dep.id).observe(latency_s)
        if ok:
            self.cooldowns.succeeded(dep.id)
            if latency_s is not None:
                old = self.latency[dep.id]
                self.latency[dep.id] = latency_s if old == 0.0 else old + LATENCY_ALPHA * (latency_s - old)
        else:
            self.cooldowns.failed(dep.id, self.model.cooldown_failures, self.model.cooldown_s, time.monotonic())

    # -- strategies -------------------------------------------------------------------
    def _pick_round_robin(self, deps: Sequence[Deployment], _: str) -> Deployment:
        """Smooth weighted round robin (nginx's): exact shares, evenly interleaved.
        With equal weights it is plain rotation."""
        total = 0.0
        best = deps[0]
        for dep in deps:
            weight = dep.weight
            self._current[dep.id] += weight
            total += weight
            if self._current[dep.id] > self._current[best.id]:
                best = dep
        self._current[best.id] -= total
        return best

    def _pick_weighted(self, deps: Sequence[Deployment], _: str) -> Deployment:
        weights = [d.weight for d in deps]
        if not any(weights):
            return random.choice(deps)
        return random.choices(deps, weights=weights)[0]

    def _pick_least_busy(self, deps: Sequence[Deployment], _: str) -> Deployment:
        self._tick += 1
        fewest = min(self.in_flight[d.id] for d in deps)
        tied = [d for d in deps if self.in_flight[d.id] == fewest]
        return tied[self._tick % len(tied)]

    def _pick_lowest_latency(self, deps: Sequence[Deployment], _: str) -> Deployment:
        untried = [d for d in deps if self.latency[d.id] == 0.0]
        if untried:
            return untried[0]
        return min(deps, key=lambda d: self.latency[d.id])

    def _pick_sticky(self, deps: Sequence[Deployment], key: str) -> Deployment:
        """Rendezvous hashing: the same key keeps its deployment while that one is up,
        and only its keys move when one goes down."""
        if not key:
            return self._pick_round_robin(deps, key)

        def score(dep: Deployment) -> float:
            digest = hashlib.blake2b(f"{key}|{dep.id}".encode(), digest_size=8).digest()
            unit = (int.from_bytes(digest, "big") + 1) / 2**64
            return dep.weight / -math.log(unit) if dep.weight else 0.0

        return max(deps, key=score)


def sticky_key(body: dict) -> str:
    """The user and the start of the conversation: the part a provider's prompt cache keys on."""
    user = body.get("user") or ""
    messages = body.get("messages") or body.get("input") or ""
    prefix = ""
    if isinstance(messages, list):
        for message in messages[:2]:
            if isinstance(message, dict):
                prefix += str(message.get("content", ""))[:512]
    else:
        prefix = str(messages)[:512]
    return f"{user}|{prefix}"


class Router:
    def __init__(self, models: dict[str, ModelConfig], cooldowns: Cooldowns | None = None) -> None:
        self.cooldowns = cooldowns or LocalCooldowns()
        self.balancers = {name: Balancer(model, self.cooldowns) for name, model in models.items()}

    def get(self, model: str) -> Balancer | None:
        return self.balancers.get(model)

    def rebuilt(self, models: dict[str, ModelConfig]) -> Router:
        """A router for an edited gateway.yaml: a model whose config is unchanged keeps its
        balancer (round-robin position, latency averages, requests in flight); cooldowns
        are kept by deployment id."""
        router = Router({}, self.cooldowns)
        for name, model in models.items():
            old = self.balancers.get(name)
            router.balancers[name] = old if old is not None and old.model == model else Balancer(model, self.cooldowns)
        return router
