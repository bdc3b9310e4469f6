"""The gateway while it runs: gateway.yaml reloaded without a restart, policies and
gateway.yaml kept consistent with each other, and the drain at shutdown.

gateway.yaml is watched by the policies' own machinery (`middleware/policy.py`: edits in
place, write-then-rename, ConfigMap symlink swaps, SIGHUP, `POST /admin/reload`), as a
policy of kind `gateway`. So a broken edit is refused the same way: the config in force
stays, and the error shows in the log, `/health/readiness`, `/admin/policies` and
`lockgate_policy_reload_failures_total{kind="gateway"}`.

What a reload changes live: models, deployments, balancing, cooldown settings. A request
in flight keeps the deployment it was sent to (its balancer is its own); an unchanged
model keeps its balancer, so round-robin positions, latency averages and in-flight counts
carry over. What needs a new process (`server:`, `store:`, the `middleware:` list) is
kept as it was and named in `restart_needed` (readiness, `/admin/policies`, the log).

Consistency: a gateway.yaml edit is checked against the policies in force, and a policy
edit against the gateway.yaml in force, by `proxy/checks.cross_check`, the same checks
`lockgate check` and start-up run. Either edit that would make requests fail (a fallback
chain naming a model no longer served, a model with no price under a refusing budget)
is refused like a syntax error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lockgate.gateway.checks import Layer, cross_check, layers_of
from lockgate.gateway.config import GatewayConfig, parse_config
from lockgate.gateway.stack import Mounted
from lockgate.kernel.logs import get_logger
from lockgate.kernel.parsing import ConfigError
from lockgate.kernel.policy import Policy

log = get_logger("lockgate.config")
LIVE_SECTIONS = ("models",)  # what a reload applies; the rest waits for a restart


class Lifecycle:
    """Per app: set once the process was told to stop (SIGTERM). Readiness then answers
    503 and every answer carries `connection: close`, while requests in flight finish."""

    __slots__ = ("draining",)

    def __init__(self) -> None:
        self.draining = False


class ConfigFile(Policy[GatewayConfig]):
    """gateway.yaml as a watched file; `on_change` hears of each new version in force."""

    def __init__(self, path: Path, parse: Callable[[Any, str], GatewayConfig], on_change: Callable[[GatewayConfig], None]) -> None:
        self.on_change = on_change
        self.restart_needed: list[str] = []
        super().__init__("gateway", path, parse)

    def reload(self) -> bool:
        changed = super().reload()
        if changed:
            self.on_change(self.current)
        return changed

    def status(self) -> dict[str, Any]:
        return {**super().status(), "restart_needed": list(self.restart_needed)}


def restart_needed(running: GatewayConfig, edited: GatewayConfig) -> list[str]:
    """The settings `edited` changes that only a new process can apply."""
    changed = []
    for section in ("server", "store"):
        before, after = getattr(running, section), getattr(edited, section)
        changed += [f"{section}.{f.name}" for f in dataclasses.fields(before) if getattr(before, f.name) != getattr(after, f.name)]
    if running.middleware != edited.middleware:
        changed.append("middleware")
    return changed


class LiveConfig:
    """Applies gateway.yaml edits to a running gateway and guards the policies' edits."""

    def __init__(self, config: GatewayConfig, gateway: Any, state: Any, mounted: Mounted, on_models: Callable[[GatewayConfig], None]) -> None:
        self.started = config  # what the process runs for everything that is not live
        self.current = config  # what is in force
        self.gateway = gateway
        self.state = state
        self.mounted = mounted
        self.on_models = on_models
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread: int | None = None
        self.file: ConfigFile | None = None
        if config.source and not config.source.startswith("<") and Path(config.source).is_file():
            self.file = ConfigFile(Path(config.source), self.parse, self.changed)
        for index, (_, instance) in enumerate(mounted.entries):
            instance.policy.parse = self.guarded(index, instance.policy.parse)

    def start(self) -> None:
        """From the serving loop (the lifespan): swaps are handed to it from then on."""
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()

    def stop(self) -> None:
        self.loop = None

    def layers(self) -> list[Layer]:
        return layers_of(self.mounted)

    def parse(self, raw: Any, source: str) -> GatewayConfig:
        """gateway.yaml's parser, then the checks against the policies in force."""
        config = parse_config(raw, source, self.started.base_dir)
        problems = cross_check(config, self.layers(), raw)
        if problems:
            raise ConfigError(problems)
        return config

    def guarded(self, index: int, parse: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
        """A policy's own parser, then the checks against the gateway.yaml in force."""

        def parse_checked(raw: Any, source: str) -> Any:
            policy = parse(raw, source)
            layers = self.layers()
            layers[index] = Layer(layers[index].kind, policy, source, raw)
            # the gateway.yaml version in force for the checks, even before the loop applied it
            problems = cross_check(self.file.current if self.file is not None else self.current, layers)
            if problems:
                raise ConfigError(problems)
            return policy

        return parse_checked

    def changed(self, edited: GatewayConfig) -> None:
        """Called by whoever reloaded the file (the watcher thread, or the loop for
        /admin/reload): the swap itself happens on the loop, between two requests' steps."""
        loop = self.loop
        if loop is not None and not loop.is_closed() and threading.get_ident() != self.loop_thread:
            try:
                loop.call_soon_threadsafe(self.apply, edited)
                return
            except RuntimeError:
                pass  # the loop closed meanwhile: nothing is serving, apply in place
        self.apply(edited)

    def apply(self, edited: GatewayConfig) -> None:
        pending = restart_needed(self.started, edited)
        config = dataclasses.replace(edited, server=self.started.server, store=self.started.store, middleware=self.started.middleware)
        before = self.current.models
        self.on_models(config)
        self.current = config
        self.state.config = config
        if self.file is not None:
            self.file.restart_needed = pending
        log.warning(
            "config_reloaded",
            file=config.source,
            added=sorted(set(config.models) - set(before)),
            removed=sorted(set(before) - set(config.models)),
            changed=sorted(n for n in config.models if n in before and before[n] != config.models[n]),
            restart_needed=pending,
        )


def drain_on_sigterm(lifecycle: Lifecycle) -> Callable[[], None]:
    """Chains a handler in front of the server's own SIGTERM handler (uvicorn's, which
    stops accepting and waits for requests in flight) that marks the app draining. Returns
    the undo. Only the main thread can set signal handlers: elsewhere (an app mounted in
    a test client's thread) nothing is chained."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        lifecycle.draining = True
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)

    def undo() -> None:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:
            signal.signal(signal.SIGTERM, previous)

    return undo
