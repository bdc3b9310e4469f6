"""Policy files: parsed once into an immutable object, swapped whole when the file changes.

A middleware holds a `Policy` and reads `policy.current` once per request: one
attribute read, no lock, no file I/O. A reload parses the new file completely before
the swap, so a request sees the old policy or the new one, never a mix; an invalid
edit is refused, the old policy stays in force, and the error is kept for
`/health/readiness`, `/admin/policies` and `/metrics`.
"""

from __future__ import annotations

import hashlib
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Generic, Mapping, TypeVar

import yaml

from proxy.config import ConfigError, LineLoader
from proxy.logs import get_logger

T = TypeVar("T")
PolicyError = ConfigError  # every problem as `file:line: message`

log = get_logger("lockgate.policy")
REGISTRY: "weakref.WeakSet[Policy]" = weakref.WeakSet()


class Policy(Generic[T]):
    """`source` is a path to a YAML file or an already loaded mapping; `parse(raw,
    source_name)` turns the loaded YAML into the immutable policy object or raises
    `PolicyError`. A broken file at start-up is an error: there is no old policy to keep."""

    def __init__(self, kind: str, source: str | Path | Mapping[str, Any], parse: Callable[[Any, str], T]) -> None:
        self.kind = kind
        self.parse = parse
        self.path = None if isinstance(source, Mapping) else Path(source)
        self.loaded_at = 0.0
        self.version = ""
        self.last_error: str | None = None
        self.error_at: float | None = None
        self.reloads = 0
        self.failures = 0
        if self.path is None:
            self.current: T = parse(dict(source), f"<{kind} policy>")
            self.version = digest(repr(sorted(source.items())).encode())
            self.loaded_at = time.time()
        else:
            text = self._read()
            self.current = self._parse(text)
            self.version = digest(text)
            self.loaded_at = time.time()
        REGISTRY.add(self)

    def _read(self) -> bytes:
        assert self.path is not None
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise PolicyError([f"{self.path}: cannot read: {exc.strerror}"]) from None

    def _parse(self, text: bytes) -> T:
        try:
            raw = yaml.load(text, Loader=LineLoader)  # noqa: S506 - LineLoader is a SafeLoader
        except yaml.MarkedYAMLError as exc:
            line = exc.problem_mark.line + 1 if exc.problem_mark else 0
            raise PolicyError([f"{self.path}:{line}: {exc.problem or exc}"]) from None
        return self.parse({} if raw is None else raw, str(self.path))

    def reload(self) -> bool:
        """Re-reads the file; True when a new version is now in force."""
        if self.path is None:
            return False
        try:
            text = self._read()
            version = digest(text)
            if version == self.version:
                return False
            policy = self._parse(text)
        except PolicyError as exc:
            self.failures += 1
            self.last_error = "; ".join(exc.problems)
            self.error_at = time.time()
            log.error("policy_reload_failed", kind=self.kind, file=str(self.path), error=self.last_error)
            return False
        self.current = policy
        self.version = version
        self.loaded_at = time.time()
        self.last_error = None
        self.error_at = None
        self.reloads += 1
        log.info("policy_reloaded", kind=self.kind, file=str(self.path), version=version)
        return True

    def status(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "file": str(self.path) if self.path else None,
            "version": self.version,
            "loaded_at": self.loaded_at,
            "last_error": self.last_error,
            "error_at": self.error_at,
            "reloads": self.reloads,
            "failures": self.failures,
        }


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def reload_all() -> list[dict[str, Any]]:
    for policy in list(REGISTRY):
        policy.reload()
    return statuses()


def statuses() -> list[dict[str, Any]]:
    return sorted((p.status() for p in list(REGISTRY)), key=lambda s: (s["kind"], s["file"] or ""))
