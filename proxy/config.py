"""`gateway.yaml`: loading, `${VAR}` expansion and validation with `file:line` errors.

The result is a tree of frozen dataclasses, built at start-up and again, whole, by each
hot reload of gateway.yaml (proxy/live.py). Relative paths name places next to gateway.yaml.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from lockgate.providers import registry
from lockgate.providers.base import Deployment, SettingError
from lockgate.providers.prices import parse_price

PROVIDERS = ("openai", "azure", "anthropic", "gemini", "mock", *registry.PROVIDERS)
BALANCES = ("round_robin", "weighted", "least_busy", "lowest_latency", "sticky")
MIDDLEWARES = ("auth", "throttle", "budget", "cache", "rewrite", "fallback")
STORES = ("memory", "disk", "redis")
DEPLOYMENT_KEYS = {
    "provider", "model", "base_url", "api_key", "api_version", "timeout_s", "weight", "price", "headers", "id",
    "latency_ms", "fail_rate",
} | registry.KEYS
MOCK_OPTIONS = ("latency_ms", "fail_rate")
INFO_KEYS = {"max_input_tokens", "max_tokens", "supports_vision", "supports_reasoning", "mode"}
CREDENTIAL_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "x-goog-api-key"})
MAX_INTEGER = 2**53  # the largest whole number every store (Redis's Lua, JSON) holds exactly
ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """Every problem found, each as `file:line: message`. `partial` is what could be
    parsed despite them, so `lockgate check` can go on to the files it names."""

    def __init__(self, problems: list[str], partial: Any = None) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.partial = partial


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
    leases: bool = True  # serve limits and budgets from quota leases (proxy/store/leases.py)
    max_connections: int = 64  # redis: connections per process; calls past them wait for one


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    deployments: tuple[Deployment, ...]
    balance: str = "round_robin"
    cooldown_failures: int = 3
    cooldown_s: float = 30.0
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    server: ServerConfig
    store: StoreConfig
    models: Mapping[str, ModelConfig]
    middleware: tuple[tuple[str, Any], ...]
    source: str = "<dict>"
    base_dir: Path = Path(".")
    warnings: tuple[str, ...] = ()  # `file:line: warning: ...`: legal, but probably not meant


# -- YAML with line numbers -----------------------------------------------------------
class LineDict(dict):
    line = 0
    key_lines: dict


class LineList(list):
    line = 0
    item_lines: list


MAX_NODES = 100_000  # nodes of a document with its aliases expanded: a policy is a few hundred
MAX_DEPTH = 64  # nesting of mappings and lists


class BoundedLoader(yaml.SafeLoader):
    """A SafeLoader which refuses what would cost far more to walk than to read: a
    document whose aliases expand past MAX_NODES (an alias bomb is a few hundred bytes
    and 10^9 nodes for whatever walks it) or that nests deeper than MAX_DEPTH."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            expanded_size(node)
        return node


class LineLoader(BoundedLoader):
    """A BoundedLoader whose mappings and sequences remember the line they start on."""


def expanded_size(root: yaml.Node) -> int:
    """Nodes in the document with every alias expanded, counted once per distinct node
    (so counting costs what the file holds, not what it expands to)."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, depth: int) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if depth > MAX_DEPTH:
            raise yaml.MarkedYAMLError(problem=f"nested deeper than {MAX_DEPTH} levels", problem_mark=node.start_mark)
        sizes[id(node)] = 0  # a recursive alias counts nothing more the second time round
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(child, depth + 1) for child in node.value)
        else:
            total = 1
        if total > MAX_NODES:
            raise yaml.MarkedYAMLError(problem=f"the document expands to more than {MAX_NODES:,} nodes (aliases included)", problem_mark=node.start_mark)
        sizes[id(node)] = total
        return total

    return size(root, 0)


def _construct_mapping(loader: LineLoader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, (dict, list)):
            raise yaml.constructor.ConstructorError(problem="a mapping key must be a plain value, not a mapping or a list", problem_mark=key_node.start_mark)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: LineLoader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


def _construct_timestamp(loader: LineLoader, node: yaml.ScalarNode) -> Any:
    """A date or time as YAML reads it; one that is no real date (2027-13-45) stays the
    text it was, for the field's own check to name, instead of a ValueError."""
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)
    except (ValueError, OverflowError):
        return loader.construct_scalar(node)


# YAML 1.2 booleans: only true/false. YAML 1.1 also reads on/off/yes/no as booleans,
# which would turn fallback.yaml's `on:` key into True.
LineLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
LineLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)
LineLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)


def parse_yaml(text: bytes | str, source: str, loader: type[BoundedLoader] = LineLoader) -> Any:
    """One YAML document, or `ConfigError` with `source:line: message`: the one parser
    behind `lockgate check`, start-up and every hot reload, so the three always agree
    (and `lockgate import`, with a loader of its own). An empty document is refused: it
    is what a reader sees midway through a non-atomic save, and a policy that silently
    became empty would open every door."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError([f"{source}:1: the file is not UTF-8 text (byte {exc.start})"]) from None
    if not text.strip():
        raise ConfigError([f"{source}:1: the file is empty (write `{{}}` for an empty policy)"])
    try:
        document = yaml.load(text, Loader=loader)  # noqa: S506 - every BoundedLoader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigError([f"{source}:{line}: {exc.problem or exc.context or 'invalid YAML'}"]) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ConfigError([f"{source}:{line}: the character U+{code:04X} is not allowed in YAML"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}:1: invalid YAML: {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{source}:1: nested too deeply"]) from None
    if document is None:
        raise ConfigError([f"{source}:1: the file holds no document (write `{{}}` for an empty policy)"])
    return document


def load_yaml(path: Path) -> Any:
    """Parse a YAML file, turning every problem into `file:line: message`."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    return parse_yaml(text, str(path))


def line_of(node: Any, key: Any = None) -> int:
    if isinstance(node, LineDict):
        return node.key_lines.get(key, node.line) if key is not None else node.line
    if isinstance(node, LineList):
        if isinstance(key, int) and key < len(node.item_lines):
            return node.item_lines[key]
        return node.line
    return 0


# -- validation ---------------------------------------------------------------------
class Checker:
    """Collects problems with their lines, so one run reports every mistake."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []
        self.warnings: list[str] = []  # legal, but probably not meant: `check` and `serve` print them
        self.shared: dict = {}  # what deployments of one config share (provider credentials)

    def fail(self, node: Any, key: Any, message: str) -> None:
        self.problems.append(self.where(node, key) + message)

    def warn(self, node: Any, key: Any, message: str) -> None:
        self.warnings.append(self.where(node, key) + "warning: " + message)

    def where(self, node: Any, key: Any) -> str:
        line = line_of(node, key)
        return f"{self.source}:{line}: " if line else f"{self.source}: "

    def expand(self, value: Any, node: Any, key: Any) -> Any:
        """`${VAR}` (or `${VAR:-default}`) from the environment; a missing one is an error."""
        if isinstance(value, str) and "${" in value:

            def substitute(match: re.Match) -> str:
                name, default = match.group(1), match.group(2)
                if name in os.environ:
                    return os.environ[name]
                if default is not None:
                    return default
                self.fail(node, key, f"environment variable {name} is not set")
                return ""

            return ENV_PATTERN.sub(substitute, value)
        return value

    def mapping(self, node: Any, key: Any, what: str) -> dict:
        value = node.get(key) if isinstance(node, dict) else None
        if value is None:
            return LineDict()
        if not isinstance(value, dict):
            self.fail(node, key, f"{what} must be a mapping")
            return LineDict()
        return value

    def unknown(self, node: dict, allowed: set[str] | tuple[str, ...], what: str) -> None:
        for key in node:
            if key not in allowed:
                self.fail(node, key, f"unknown key {key!r} in {what} (expected one of: {', '.join(sorted(allowed))})")

    def number(self, node: dict, key: str, default: float, *, minimum: float = 0, integer: bool = False) -> Any:
        """A finite number of at least `minimum`; with `integer`, a whole one of at most
        MAX_INTEGER. Strings are read as numbers (`"NaN"` and `"1e999"` are no numbers here)."""
        value = self.expand(node.get(key, default), node, key)
        if isinstance(value, str):
            try:
                value = float(value) if not integer else int(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(node, key, f"{key} must be a number")
            return default
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(node, key, f"{key} must be a finite number")
            return default
        if value < minimum:
            self.fail(node, key, f"{key} must be at least {minimum}")
            return default
        if integer and value != int(value):
            self.fail(node, key, f"{key} must be a whole number")
            return default
        if integer and value > MAX_INTEGER:
            self.fail(node, key, f"{key} must be at most {MAX_INTEGER}")
            return default
        return int(value) if integer else value

    def string(self, node: dict, key: str, default: str | None = None, *, required: bool = False, what: str = "") -> Any:
        if key not in node or node[key] is None:
            if required:
                self.fail(node, None, f"{what} needs {key!r}")
            return default
        value = self.expand(node[key], node, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            self.fail(node, key, f"{key} must be a string")
            return default
        return value


def parse_config(raw: Any, source: str = "<dict>", base_dir: Path | None = None) -> GatewayConfig:
    check = Checker(source)
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}:1: the config must be a mapping with at least `models:`"])
    check.unknown(raw, {"server", "store", "models", "middleware", "routing"}, "the config")

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
    config = GatewayConfig(server, store, models, middleware, source, base_dir or Path("."), tuple(check.warnings))
    if check.problems:
        raise ConfigError(check.problems, config)
    return config


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


def parse_deployment(check: Checker, node: dict, model_name: str) -> Deployment | None:
    check.unknown(node, DEPLOYMENT_KEYS, "a deployment")
    provider = check.string(node, "provider", required=True, what="a deployment")
    if provider is None:
        return None
    if provider not in PROVIDERS:
        check.fail(node, "provider", f"provider must be one of {', '.join(PROVIDERS)}, not {provider!r}")
        return None
    model = check.string(node, "model", model_name if provider == "mock" else None, required=provider != "mock", what=f"a {provider} deployment")
    base_url = check.string(node, "base_url", "") or registry.default_base_url(provider)
    if provider == "azure" and not base_url:
        check.fail(node, None, "an azure deployment needs base_url (https://RESOURCE.openai.azure.com)")
    if base_url and not base_url.startswith(("http://", "https://")):
        check.fail(node, "base_url", f"base_url must start with http:// or https://, not {base_url!r}")
    headers_node = check.mapping(node, "headers", "headers")
    headers = {str(k).lower(): str(check.expand(v, headers_node, k)) for k, v in headers_node.items()}
    price = parse_price(check, check.mapping(node, "price", "price")) if "price" in node else None
    options = {}
    for key in MOCK_OPTIONS:
        if key in node:
            if provider != "mock":
                check.fail(node, key, f"{key} applies only to mock deployments")
            options[key] = check.number(node, key, 0)
    if options.get("fail_rate", 0) > 1:
        check.fail(node, "fail_rate", "fail_rate must be between 0 and 1")
    options.update(provider_options(check, node, provider))
    api_key = check.string(node, "api_key")
    if api_key is None:
        try:
            api_key = registry.default_api_key(provider)
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


def provider_options(check: Checker, node: dict, provider: str) -> dict:
    """Settings only some providers take (bedrock's region and AWS keys, vertex's project...)."""
    allowed = registry.SETTINGS.get(provider, ())
    if provider in registry.KEYLESS and "api_key" in node:
        check.fail(node, "api_key", f"a {provider} deployment takes no api_key: it authenticates with {registry.KEYLESS[provider]}")
    values = {}
    for key in registry.KEYS & node.keys():
        if key not in allowed:
            check.fail(node, key, f"{key} applies only to {registry.providers_with(key)} deployments")
        else:
            values[key] = check.string(node, key)
    try:
        return registry.options(provider, values, check.shared)
    except SettingError as exc:
        check.fail(node, exc.key, exc.message)
        return {}


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
