"""`gateway.yaml`: loading, `${VAR}` expansion and validation with `file:line` errors.

The result is a tree of frozen dataclasses, built at start-up and again, whole, by each
hot reload of gateway.yaml (gateway/live.py). Relative paths name places next to gateway.yaml.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockgate.gateway.stack import KINDS as MIDDLEWARES
from lockgate.kernel.parsing import Checker, ConfigError, load_yaml
from lockgate.providers.passthrough import PROVIDERS as PASSTHROUGH_PROVIDERS
from lockgate.providers.passthrough import deployments_of
from lockgate.proxy.mcp import McpServer, parse_mcp_servers
from lockgate.proxy.models import ModelConfig, parse_model

STORES = ("memory", "disk", "redis")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 4000
    max_body_bytes: int = 10 * 1024 * 1024
    max_header_bytes: int = 64 * 1024  # the request line and headers together: past this, 431
    header_timeout_s: float = 10.0  # from the first byte of a request to the end of its headers: past this, 408
    body_timeout_s: float = 60.0  # from the end of the headers to the end of the body: past this, 408
    max_upstream_body_bytes: int = 128 * 1024 * 1024  # a non-streamed upstream answer past this is a 502
    shutdown_grace_s: float = 30.0  # on SIGTERM, how long requests and streams in flight may take to finish


@dataclass(frozen=True, slots=True)
class StoreConfig:
    backend: str = "disk"
    path: str = ".lockgate/state"
    url: str = "redis://127.0.0.1:6379/0"
    leases: bool = True  # serve limits and budgets from quota leases (kernel/store/leases.py)
    max_connections: int = 64  # redis: connections per process; calls past them wait for one


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    server: ServerConfig
    store: StoreConfig
    models: Mapping[str, ModelConfig]
    middleware: tuple[tuple[str, Any], ...]
    source: str = "<dict>"
    base_dir: Path = Path(".")
    warnings: tuple[str, ...] = ()  # `file:line: warning: ...`: legal, but probably not meant
    passthrough: Mapping[str, str] = field(default_factory=dict)  # provider -> the deployment id its passthrough routes use by default
    mcp_servers: tuple[McpServer, ...] = ()  # remote MCP servers lockgate relays (proxy/mcp.py)


def parse_config(raw: Any, source: str = "<dict>", base_dir: Path | None = None) -> GatewayConfig:
    check = Checker(source)
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}:1: the config must be a mapping with at least `models:`"])
    check.unknown(raw, {"server", "store", "models", "middleware", "routing", "passthrough", "mcp_servers"}, "the config")

    server_node = check.mapping(raw, "server", "server")
    check.unknown(server_node, set(ServerConfig.__dataclass_fields__), "server")
    defaults = ServerConfig()
    server = ServerConfig(
        host=check.string(server_node, "host", defaults.host),
        port=check.number(server_node, "port", defaults.port, minimum=0, integer=True),
        max_body_bytes=check.number(server_node, "max_body_bytes", defaults.max_body_bytes, minimum=1, integer=True),
        max_header_bytes=check.number(server_node, "max_header_bytes", defaults.max_header_bytes, minimum=1024, integer=True),
        header_timeout_s=check.number(server_node, "header_timeout_s", defaults.header_timeout_s, minimum=0.1),
        body_timeout_s=check.number(server_node, "body_timeout_s", defaults.body_timeout_s, minimum=0.1),
        max_upstream_body_bytes=check.number(server_node, "max_upstream_body_bytes", defaults.max_upstream_body_bytes, minimum=1024, integer=True),
        shutdown_grace_s=check.number(server_node, "shutdown_grace_s", defaults.shutdown_grace_s),
    )
    store = parse_store(check, raw, base_dir)

    routing = check.mapping(raw, "routing", "routing")
    check.unknown(routing, {"cooldown_failures", "cooldown_s"}, "routing")
    failures = check.number(routing, "cooldown_failures", 3, minimum=1, integer=True)
    cooldown_s = check.number(routing, "cooldown_s", 30.0)

    models: dict[str, ModelConfig] = {}
    model_nodes = raw.get("models")
    if model_nodes == []:
        # what an import of policies alone writes: valid, though nothing can be served yet
        check.warn(raw, "models", "`models:` is empty: every model request answers 404 model_not_found until one is added")
    elif not isinstance(model_nodes, list):
        check.fail(raw, "models" if "models" in raw else None, "`models:` must be a list of models")
        model_nodes = []
    for index, node in enumerate(model_nodes):
        if not isinstance(node, dict):
            check.fail(model_nodes, index, "each model must be a mapping with `name` and `deployments`")
            continue
        model = parse_model(check, node, failures, cooldown_s)
        if model is None:
            continue
        if model.name in models:
            check.fail(node, "name", f"model {model.name!r} is defined twice")
        models[model.name] = model

    middleware = parse_middleware(check, raw, base_dir)
    passthrough = parse_passthrough(check, raw, models)
    mcp_servers = parse_mcp_servers(check, raw)
    config = GatewayConfig(
        server, store, models, middleware, source, base_dir or Path("."), tuple(check.warnings), passthrough=passthrough, mcp_servers=mcp_servers
    )
    if check.problems:
        raise ConfigError(check.problems, config)
    return config


def parse_passthrough(check: Checker, raw: dict, models: Mapping[str, ModelConfig]) -> dict[str, str]:
    """`passthrough: {openai: openai/gpt-4o-mini}`: the deployment (by id) each provider's
    passthrough routes use when a request names none (proxy/passthrough.py)."""
    node = check.mapping(raw, "passthrough", "passthrough")
    defaults: dict[str, str] = {}
    for provider, dep_id in node.items():
        if provider not in PASSTHROUGH_PROVIDERS:
            check.fail(node, provider, f"passthrough: {provider!r} is not a provider with passthrough routes ({', '.join(PASSTHROUGH_PROVIDERS)})")
            continue
        if not isinstance(dep_id, str) or not dep_id:
            check.fail(node, provider, f"passthrough.{provider} must be the id of a {provider} deployment (`provider/model`, or its `id:`)")
            continue
        known = deployments_of(provider, models)
        if dep_id not in known:
            names = ", ".join(sorted(known)) or "none"
            check.fail(node, provider, f"passthrough.{provider}: no {provider} deployment has the id {dep_id!r} (the {provider} deployments: {names})")
            continue
        defaults[provider] = dep_id
    return defaults


def parse_store(check: Checker, raw: dict, base_dir: Path | None) -> StoreConfig:
    """`store:` alone: all that `lockgate spend` reads, so it needs no provider key."""
    store_node = check.mapping(raw, "store", "store")
    check.unknown(store_node, {"backend", "path", "url", "leases", "max_connections"}, "store")
    backend = check.string(store_node, "backend", "disk")
    if backend not in STORES:
        check.fail(store_node, "backend", f"store backend must be one of {', '.join(STORES)}, not {backend!r}")
    path = resolve_path(check.string(store_node, "path", ".lockgate/state"), base_dir)
    leases = store_node.get("leases", True)
    if not isinstance(leases, bool):
        check.fail(store_node, "leases", "leases must be true or false")
        leases = True
    return StoreConfig(
        backend=backend,
        path=path,
        url=check.string(store_node, "url", "redis://127.0.0.1:6379/0"),
        leases=leases,
        max_connections=check.number(store_node, "max_connections", 64, minimum=1, integer=True),
    )


def resolve_path(path: str, base_dir: Path | None) -> str:
    """A relative path in gateway.yaml names a place next to gateway.yaml, wherever the
    gateway was started from. A config given as a dict has no file: its paths stay as given."""
    if base_dir is None or not path or Path(path).is_absolute():
        return path
    return str(base_dir / path)


def parse_middleware(check: Checker, raw: dict, base_dir: Path | None = None) -> tuple[tuple[str, Any], ...]:
    nodes = raw.get("middleware")
    if nodes is None:
        return ()
    if not isinstance(nodes, list):
        check.fail(raw, "middleware", "`middleware:` must be a list like `- auth: policies/auth.yaml`")
        return ()
    stack: list[tuple[str, Any]] = []
    for index, node in enumerate(nodes):
        if not isinstance(node, dict) or len(node) != 1:
            check.fail(nodes, index, "each middleware entry is one `name: policy` pair")
            continue
        (name, policy), = node.items()
        if name not in MIDDLEWARES:
            check.fail(node, name, f"unknown middleware {name!r} (expected one of: {', '.join(MIDDLEWARES)})")
            continue
        if any(existing == name for existing, _ in stack):
            check.fail(node, name, f"middleware {name!r} is listed twice")
            continue
        policy = check.expand(policy, node, name)
        stack.append((name, resolve_path(policy, base_dir) if isinstance(policy, str) else policy))
    return tuple(stack)


def load_config(config: str | Path | Mapping[str, Any] | GatewayConfig) -> GatewayConfig:
    """A parsed config from a path, a dict or an already parsed config."""
    if isinstance(config, GatewayConfig):
        return config
    if isinstance(config, Mapping):
        return parse_config(dict(config))
    path = Path(config)
    # absolute, not resolved: in a ConfigMap volume gateway.yaml is a symlink into a
    # `..2024_...` directory that the next update deletes; its neighbours are found by name
    return parse_config(load_yaml(path), str(path), path.absolute().parent)
