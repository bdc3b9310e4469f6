"""Policy and config files: YAML with line numbers, parsed with bounds (aliases, depth,
size), `${VAR}` expansion, and `Checker`, which collects every problem as `file:line:
message` so one run reports every mistake. One parser decides for `lockgate check`,
start-up and hot reload alike.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import yaml

MAX_INTEGER = 2**53  # the largest whole number every store (Redis's Lua, JSON) holds exactly
ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
D = TypeVar("D")


class ConfigError(Exception):
    """Every problem found, each as `file:line: message`. `partial` is what could be
    parsed despite them, so `lockgate check` can go on to the files it names."""

    def __init__(self, problems: list[str], partial: Any = None) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.partial = partial


# -- YAML with line numbers -----------------------------------------------------------
class LineDict(dict[Any, Any]):
    line = 0
    key_lines: dict[Any, int]


class LineList(list[Any]):
    line = 0
    item_lines: list[int]


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
        self.shared: dict[str, Any] = {}  # what deployments of one config share (provider credentials)

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

            def substitute(match: re.Match[str]) -> str:
                name: str = match.group(1)
                default: str | None = match.group(2)
                if name in os.environ:
                    return os.environ[name]
                if default is not None:
                    return default
                self.fail(node, key, f"environment variable {name} is not set")
                return ""

            return ENV_PATTERN.sub(substitute, value)
        return value

    def mapping(self, node: Any, key: Any, what: str) -> dict[Any, Any]:
        value = node.get(key) if isinstance(node, dict) else None
        if value is None:
            return LineDict()
        if not isinstance(value, dict):
            self.fail(node, key, f"{what} must be a mapping")
            return LineDict()
        return value

    def unknown(self, node: dict[Any, Any], allowed: Collection[str], what: str) -> None:
        for key in node:
            if key not in allowed:
                self.fail(node, key, f"unknown key {key!r} in {what} (expected one of: {', '.join(sorted(allowed))})")

    @overload
    def number(self, node: dict[Any, Any], key: str, default: int, *, minimum: float = 0, integer: Literal[True]) -> int: ...
    @overload
    def number(self, node: dict[Any, Any], key: str, default: float, *, minimum: float = 0, integer: bool = False) -> float: ...
    def number(self, node: dict[Any, Any], key: str, default: float, *, minimum: float = 0, integer: bool = False) -> float:
        """A finite number of at least `minimum`; with `integer`, a whole one of at most
        MAX_INTEGER. Strings are read as numbers (`"NaN"` and `"1e999"` are no numbers here)."""
        value = self.expand(node.get(key, default), node, key)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value) if not integer else int(value)
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

    @overload
    def string(self, node: dict[Any, Any], key: str, default: None = None, *, required: bool = False, what: str = "") -> str | None: ...
    @overload
    def string(self, node: dict[Any, Any], key: str, default: D, *, required: bool = False, what: str = "") -> str | D: ...
    def string(self, node: dict[Any, Any], key: str, default: D | None = None, *, required: bool = False, what: str = "") -> str | D | None:
        """A string (a number given is read as its text), or `default` when it is missing or no string."""
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
