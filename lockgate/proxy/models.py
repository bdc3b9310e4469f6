"""gateway.yaml's `models:`: each model name clients ask for, with its deployments, how
they are balanced and cooled down, and what is known of it (`info:`). Parsed with every
problem as `file:line`; the result is frozen and swapped whole by a hot reload.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lockgate.kernel.parsing import ENV_PATTERN, Checker
from lockgate.providers import catalog, registry
from lockgate.providers.base import Deployment, Price, SettingError
from lockgate.providers.prices import lookup, parse_price

BALANCES = ("round_robin", "weighted", "least_busy", "lowest_latency", "sticky")
DEPLOYMENT_KEYS = {"provider", "model", "base_url", "api_key", "api_version", "timeout_s", "weight", "price", "headers", "id"} | registry.SETTING_KEYS
INFO_KEYS = {"max_input_tokens", "max_tokens", "supports_vision", "supports_reasoning", "mode"}
CREDENTIAL_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "x-goog-api-key"})


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    deployments: tuple[Deployment, ...]
    balance: str = "round_robin"
    cooldown_failures: int = 3
    cooldown_s: float = 30.0
    info: Mapping[str, Any] = field(default_factory=dict)


class ConfigCatalog:
    """The `Catalog` (providers/catalog.py) of the models in force: a served model is
    priced and bounded by its deployments; any other name by the built-in tables. `models`
    is read on every call, so a hot reload is seen at once."""

    def __init__(self, models: Callable[[], Mapping[str, ModelConfig]]) -> None:
        self.models = models

    def price(self, model: str) -> Price | None:
        configured = self.models().get(model)
        if configured is not None:
            first = configured.deployments[0]
            price = first.price or lookup(first.model)
            if price is not None:
                return price
        return lookup(model)

    def deployment_price(self, deployment: str | None) -> Price | None:
        if deployment is None:
            return None
        for model in self.models().values():
            for dep in model.deployments:
                if dep.id == deployment:
                    return dep.price
        return None

    def output_limit(self, model: str) -> int:
        configured = self.models().get(model)
        if configured is not None:
            return max(catalog.output_limit(dep, configured.info) for dep in configured.deployments)
        return catalog.BUILTIN.output_limit(model)

    def serves(self, model: str) -> bool:
        return model in self.models()

    def names(self) -> Iterable[str]:
        return tuple(self.models())


def parse_model(check: Checker, node: dict, failures: int, cooldown_s: float) -> ModelConfig | None:
    check.unknown(node, {"name", "balance", "deployments", "cooldown_failures", "cooldown_s", "info"}, "a model")
    name = check.string(node, "name", required=True, what="a model")
    balance = check.string(node, "balance", "round_robin")
    if balance not in BALANCES:
        check.fail(node, "balance", f"balance must be one of {', '.join(BALANCES)}, not {balance!r}")
    info = check.mapping(node, "info", "info")
    check.unknown(info, INFO_KEYS, "info")
    dep_nodes = node.get("deployments")
    if not isinstance(dep_nodes, list) or not dep_nodes:
        check.fail(node, "deployments" if "deployments" in node else None, f"model {name!r} needs a non-empty `deployments:` list")
        return None
    deployments: list[Deployment] = []
    seen: dict[str, int] = {}
    for index, dep_node in enumerate(dep_nodes):
        if not isinstance(dep_node, dict):
            check.fail(dep_nodes, index, "each deployment must be a mapping with at least `provider`")
            continue
        dep = parse_deployment(check, dep_node, name)
        if dep is None:
            continue
        seen[dep.id] = seen.get(dep.id, 0) + 1
        if seen[dep.id] > 1:
            dep = Deployment(**{**{f: getattr(dep, f) for f in dep.__dataclass_fields__}, "id": f"{dep.id}#{seen[dep.id]}"})
        deployments.append(dep)
    if not name:
        return None
    return ModelConfig(
        name=name,
        deployments=tuple(deployments),
        balance=balance,
        cooldown_failures=check.number(node, "cooldown_failures", failures, minimum=1, integer=True),
        cooldown_s=check.number(node, "cooldown_s", cooldown_s),
        info=dict(info),
    )


def parse_deployment(check: Checker, node: dict, model_name: str | None) -> Deployment | None:
    """One deployment of the model `model_name` (None when the model has no name: that is
    reported, and its deployments are still checked)."""
    check.unknown(node, DEPLOYMENT_KEYS, "a deployment")
    provider = check.string(node, "provider", required=True, what="a deployment")
    if provider is None:
        return None
    entry = registry.PROVIDERS.get(provider)
    if entry is None:
        check.fail(node, "provider", f"provider must be one of {', '.join(registry.PROVIDERS)}, not {provider!r}")
        return None
    required = entry.model_required
    model = check.string(node, "model", None if required else model_name, required=required, what=f"a {provider} deployment")
    base_url = check.string(node, "base_url", "") or entry.base_url
    if entry.base_url_required and not base_url:
        check.fail(node, None, entry.base_url_required)
    if base_url and not base_url.startswith(("http://", "https://")):
        check.fail(node, "base_url", f"base_url must start with http:// or https://, not {base_url!r}")
    headers_node = check.mapping(node, "headers", "headers")
    headers = {str(k).lower(): str(check.expand(v, headers_node, k)) for k, v in headers_node.items()}
    price = parse_price(check, check.mapping(node, "price", "price")) if "price" in node else None
    options = provider_options(check, node, entry)
    api_key = check.string(node, "api_key")
    if api_key is None:
        try:
            api_key = entry.default_api_key()
        except SettingError as exc:
            check.fail(node, exc.key, exc.message)
    dep_id = check.string(node, "id") or f"{provider}/{model}"
    key_variable = empty_key_variable(node, api_key, headers)
    if key_variable is not None:
        check.warn(node, "api_key", f"model {model_name!r}, deployment {dep_id}: api_key is empty ({key_variable} is not set or empty), "
                                    f"so every request to this deployment will be refused until {key_variable} is set")
    return Deployment(
        id=dep_id,
        provider=provider,
        model=model or "",
        base_url=base_url,
        api_key=api_key or None,
        api_version=check.string(node, "api_version"),
        timeout_s=check.number(node, "timeout_s", 600.0, minimum=0.001),
        weight=check.number(node, "weight", 1.0, minimum=0.0),
        price=price,
        headers=headers,
        options=options,
        key_variable=key_variable,
    )


def empty_key_variable(node: dict, api_key: str | None, headers: Mapping[str, str]) -> str | None:
    """The variable a deployment's api_key was to be read from (`${OPENAI_API_KEY:-}`)
    when it came out empty, unless the deployment carries a credential in `headers:`.
    A deployment that needs no key leaves `api_key` out."""
    raw = node.get("api_key")
    if api_key or not isinstance(raw, str) or CREDENTIAL_HEADERS & headers.keys():
        return None
    names = [name for name, _ in ENV_PATTERN.findall(raw)]
    return " / ".join(names) if names else None


def provider_options(check: Checker, node: dict, entry: registry.ProviderEntry) -> dict:
    """Settings only some providers take (bedrock's region and AWS keys, vertex's project, the mock's latency...)."""
    if entry.keyless is not None and "api_key" in node:
        check.fail(node, "api_key", f"a {entry.name} deployment takes no api_key: it authenticates with {entry.keyless}")
    values = {}
    for key in registry.SETTING_KEYS & node.keys():
        kind = entry.settings.get(key)
        if kind is None:
            check.fail(node, key, f"{key} applies only to {registry.providers_with(key)} deployments")
        else:
            values[key] = check.number(node, key, 0) if kind is float else check.string(node, key)
    try:
        return entry.options(values, check.shared)
    except SettingError as exc:
        check.fail(node, exc.key, exc.message)
        return {}
