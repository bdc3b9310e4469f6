"""What must hold between gateway.yaml and the policy files it mounts, so that a config
`lockgate check` passes cannot fail on its first request.

Each file's own parser already reports its own mistakes (`file:line: message`, all of
them). This module adds the mistakes only the files together show:

- a model name that a middleware sends inward (a fallback chain or `context_window`
  target, a rewrite alias target, rule `model` or `split`) that no model in gateway.yaml
  serves. An alias counts as served for a middleware when a rewrite mounted inside it
  resolves the alias: a fallback replays only what is inside it.
- a served model with no known price while a budget refuses unpriced models
  (`unknown_price: refuse`): the price is looked up by the budget's own `price_for`, the
  function requests use.

`lockgate check`, start-up and every hot reload (of gateway.yaml or of a policy) run
these same checks through `cross_check`; a reload they refuse keeps what is in force.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockgate.gateway.config import GatewayConfig, parse_config
from lockgate.gateway.stack import Mounted, Services, build
from lockgate.kernel.parsing import Checker, ConfigError, load_yaml
from lockgate.kernel.policy import Policy
from lockgate.kernel.store.memory import MemoryStore
from lockgate.middleware.budget import price_for
from lockgate.proxy.models import ConfigCatalog


@dataclass(frozen=True, slots=True)
class Layer:
    """One mounted middleware's policy as the checks see it."""

    kind: str
    policy: Any  # the parsed policy object in force (or proposed)
    source: str  # its file, or `<kind policy>` for one given as a mapping
    raw: Any = None  # the YAML as loaded, for line numbers; None: read from `source` when needed


def layer_of(kind: str, policy: Policy[Any]) -> Layer:
    """The layer of a mounted middleware's `Policy` (kernel/policy.py), as in force."""
    return Layer(kind, policy.current, str(policy.path) if policy.path is not None else f"<{policy.kind} policy>")


def layers_of(mounted: Mounted) -> list[Layer]:
    return [layer_of(name, instance.policy) for name, instance in mounted.entries]


def cross_check(config: GatewayConfig, layers: list[Layer], gateway_raw: Any = None, *, partial: bool = False) -> list[str]:
    """Every problem between `config` and the policies of `layers` (outermost first).
    `partial`: `config` is what parsed of a gateway.yaml with problems of its own."""
    if gateway_raw is None:
        gateway_raw = raw_of(config.source)
    problems: list[str] = []
    served = set(config.models)
    if partial:
        # a model whose own entry has a mistake is still one gateway.yaml means to serve:
        # that mistake is reported once, where it is, not again by everything naming the model
        served |= set(model_nodes(gateway_raw))
    for index, layer in enumerate(layers):
        raw = layer.raw if layer.raw is not None else raw_of(layer.source)
        check = Checker(layer.source)
        inner_aliases: dict[str, str] = {}
        for inner in layers[index + 1 :]:
            if inner.kind == "rewrite":
                inner_aliases.update(inner.policy.aliases)
        outer_aliases = {a for outer in layers[:index] if outer.kind == "rewrite" for a in outer.policy.aliases}
        for node, key, what, name in named_models(layer, raw):
            if name in served or inner_aliases.get(name) in served:
                continue
            hint = ""
            if name in outer_aliases:
                hint = (f" ({name!r} is an alias of the rewrite mounted outside {layer.kind}, which a {layer.kind} never goes back through: "
                        "name the model itself)")
            check.fail(node, key, f"{what} names model {name!r}, which no model in {config.source} serves{hint}")
        if layer.kind == "budget" and layer.policy.unknown_price == "refuse":
            problems.extend(unpriced(config, layer, gateway_raw))
        if layer.kind == "guard" and any(outer.kind == "cache" for outer in layers[:index]):
            problems.extend(tokenized_in_cache(layer, raw))
        problems.extend(check.problems)
    return problems


def named_models(layer: Layer, raw: Any) -> Iterator[tuple[Any, Any, str, str]]:
    """(node, key, what, model name) for every model name a policy sends inward, with the
    YAML node and key that hold it (for its line)."""
    raw = raw if isinstance(raw, dict) else {}
    if layer.kind == "fallback":
        chains = raw.get("chains") if isinstance(raw.get("chains"), dict) else {}
        for model, targets in layer.policy.chains.items():
            for target in targets:
                yield chains, model, f"the fallback chain of {model!r}", target
        windows = raw.get("context_window") if isinstance(raw.get("context_window"), dict) else {}
        for model, target in layer.policy.context_window.items():
            yield windows, model, f"context_window of {model!r}", target
    elif layer.kind == "rewrite":
        aliases = raw.get("aliases") if isinstance(raw.get("aliases"), dict) else {}
        for alias, target in layer.policy.aliases.items():
            yield aliases, alias, f"alias {alias!r}", target
        rule_nodes = raw.get("rules") if isinstance(raw.get("rules"), list) else []
        for index, rule in enumerate(layer.policy.rules):
            node = rule_nodes[index] if index < len(rule_nodes) else {}
            if rule.model is not None:
                yield node, "model", f"rule {rule.label!r}", rule.model
            for model, _ in rule.split:
                split = node.get("split") if isinstance(node, dict) and isinstance(node.get("split"), dict) else node
                yield split, model if split is not node else "split", f"the split of rule {rule.label!r}", model
    elif layer.kind == "guard":
        rule_nodes = raw.get("rules") if isinstance(raw.get("rules"), list) else []
        for index, rule in enumerate(layer.policy.rules):
            node = rule_nodes[index] if index < len(rule_nodes) else {}
            if rule.moderation is not None:
                spec = node.get("moderation") if isinstance(node, dict) and isinstance(node.get("moderation"), dict) else node
                yield spec, "model", f"the moderation of guard rule {rule.name!r}", rule.moderation.model


def tokenized_in_cache(layer: Layer, raw: Any) -> list[str]:
    """A guard that tokenizes must be mounted outside the cache: inside it, the cache would
    keep answers with the originals restored (README "Guard": the cache keeps the tokenized form)."""
    check = Checker(layer.source)
    rules = raw.get("rules") if isinstance(raw, dict) else None
    nodes: list[Any] = rules if isinstance(rules, list) else []
    for index, rule in enumerate(layer.policy.rules):
        if rule.action == "tokenize" and rule.inbound:
            node = nodes[index] if index < len(nodes) else {}
            check.fail(node, "action", f"guard rule {rule.name!r} tokenizes, and the guard is mounted inside the cache, which would keep answers "
                       "with the originals restored: list the guard before the cache in gateway.yaml's middleware (the cache then keeps "
                       "the tokenized request and answer)")
    return check.problems


def unpriced(config: GatewayConfig, layer: Layer, gateway_raw: Any) -> list[str]:
    # priced as a request is: by the budget's own price_for, with the gateway's catalog
    models = ConfigCatalog(lambda: config.models)
    check = Checker(config.source)
    lines = model_nodes(gateway_raw)
    for name, model in config.models.items():
        if model.deployments and price_for(layer.policy, models, name) is None:
            node = lines.get(name, {})
            check.fail(
                node,
                "name",
                f"model {name!r} has no known price, and {layer.source} refuses unpriced models (unknown_price: refuse): "
                f"give its deployment a `price: {{input_per_mtok: ..., output_per_mtok: ...}}` line, "
                f"list it under `prices:` in {layer.source}, or set `unknown_price: allow` there",
            )
    return check.problems


def model_nodes(raw: Any) -> dict[str, Any]:
    """Each model's YAML node in gateway.yaml, by name."""
    nodes = raw.get("models") if isinstance(raw, dict) else None
    if not isinstance(nodes, list):
        return {}
    return {node["name"]: node for node in nodes if isinstance(node, dict) and isinstance(node.get("name"), str)}


def raw_of(source: str) -> Any:
    """A file's YAML with its lines, or nothing when there is no file to read (a config
    or policy given as a mapping): problems are then reported without a line."""
    path = Path(source)
    if source.startswith("<") or not path.is_file():
        return None
    try:
        return load_yaml(path)
    except ConfigError:
        return None


# -- the whole config, for `lockgate check` and `lockgate serve` ------------------------
@dataclass
class Report:
    config: GatewayConfig | None
    problems: list[str]


def inspect(path: str | Path) -> Report:
    """Every problem of gateway.yaml and of every policy file it names, each file parsed
    even when another one has problems; then the checks between them."""
    path = Path(path)
    try:
        raw = load_yaml(path)
    except ConfigError as exc:
        return Report(None, exc.problems)
    problems: list[str] = []
    try:
        config = parse_config(raw, str(path), path.absolute().parent)
    except ConfigError as exc:
        problems.extend(exc.problems)
        config = exc.partial
    if config is None:
        return Report(None, problems)
    partial = bool(problems)
    # the store is not opened to check: a memory store stands in for it
    built = build(config.middleware, config.source, Services(MemoryStore(), ConfigCatalog(lambda: config.models)))
    problems.extend(built.problems)
    problems.extend(cross_check(config, layers_of(built.mounted), raw, partial=partial))
    return Report(config if not problems else None, problems)
