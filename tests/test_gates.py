"""The static gates (issue 20): ruff and mypy, configured in pyproject.toml, over the parts
of lockgate brought up to them, so `make test` fails when either finds a problem there.

CHECKED names the whole package and its tests. Ruff checks every path in it; mypy checks the package's own
(tests are linted, not typed), in its default mode except `lockgate.kernel.*` and
`lockgate.middleware.*`, which pyproject makes strict. mypy keeps its cache in
.mypy_cache: a run after the first takes a second.

The probes prove the configuration bites: a file that breaks the rules is refused, so a
gate cannot pass by checking nothing (a rule set gone, a strict override that no longer
matches its modules)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ["lockgate", "tests"]
TYPED = [path for path in CHECKED if path.split("/")[0] == "lockgate"]
PYPROJECT = str(ROOT / "pyproject.toml")


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=100)


def test_ruff() -> None:
    result = run("ruff", "check", "--output-format", "concise", *CHECKED)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy() -> None:
    result = run("mypy", *TYPED)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_probe_is_refused(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import sys\nimport os\nfrom typing import Callable\n\n\ndef f(run: Callable[[], None], seen=[]):\n    return os, sys, run, seen\n")
    result = run("ruff", "check", "--no-cache", "--config", PYPROJECT, "--output-format", "concise", str(probe))
    assert result.returncode == 1, result.stdout + result.stderr
    for code in ("I001", "UP035", "B006"):  # isort, pyupgrade, bugbear: the rule set is the configured one
        assert code in result.stdout, result.stdout


# fine in mypy's default mode; three errors under --strict (untyped, bare generic, Any returned)
STRICT_PROBE = """from typing import Any


def untyped(value):
    return value


def size(items: list) -> int:
    return len(items)


def number(value: Any) -> int:
    return value
"""
STRICT_ONLY = ("[no-untyped-def]", "[type-arg]", "[no-any-return]")


def mypy_probe(tmp_path: Path, layer: str) -> subprocess.CompletedProcess[str]:
    """mypy, as configured, over the probe as a module of `lockgate.<layer>`."""
    package = tmp_path / "lockgate" / layer
    package.mkdir(parents=True)
    (tmp_path / "lockgate" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "probe.py").write_text(STRICT_PROBE)
    return run("mypy", "--config-file", PYPROJECT, "--cache-dir", str(ROOT / ".mypy_cache" / "probe"), f"lockgate/{layer}/probe.py", cwd=tmp_path)


@pytest.mark.parametrize("layer", ["kernel", "middleware"])
def test_mypy_strict_layers_refuse_the_probe(tmp_path: Path, layer: str) -> None:
    result = mypy_probe(tmp_path, layer)
    assert result.returncode == 1, result.stdout + result.stderr
    for code in STRICT_ONLY:
        assert code in result.stdout, result.stdout


@pytest.mark.parametrize("layer", ["providers", "proxy", "gateway"])
def test_mypy_other_layers_are_in_default_mode(tmp_path: Path, layer: str) -> None:
    result = mypy_probe(tmp_path, layer)
    assert result.returncode == 0, result.stdout + result.stderr
