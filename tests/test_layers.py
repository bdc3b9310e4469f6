"""The import contract (README "Layout"), read from the source as static tools read it.

    gateway      the app factory, server, CLI, console and admin API, importer, reload, checks
    proxy  |  middleware      (independent of each other)
    providers    wire formats: pure translators, prices, usage, endpoint kinds
    kernel       request context, errors, policy files, store, logs, metrics

A module imports only modules of its own layer or of a layer below, and the graph of
imports (function-local ones included) has no circle: a function-local import may put off
loading a heavy module, never hide a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import lockgate

PACKAGE = Path(lockgate.__file__).parent
RANK = {"kernel": 0, "providers": 1, "middleware": 2, "proxy": 2, "gateway": 3}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The lockgate modules `path` imports, wherever in it (a name imported from a package
    counts as its submodule when there is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("lockgate"):
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            found.update(name if name in known else node.module for name in names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("lockgate."))
    return {name for name in found if name in known}


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def test_every_module_belongs_to_a_layer():
    loose = [name for name in modules() if name not in ("lockgate", "lockgate.__main__") and layer(name) is None]
    assert not loose, f"modules outside the layers: {loose}"


def test_imports_go_down_the_layers_only():
    wrong = []
    for module, targets in graph().items():
        mine = layer(module)
        if mine is None:
            continue
        for target in targets:
            theirs = layer(target)
            if theirs is None:
                continue  # the package root: its lazy public names
            if RANK[theirs] > RANK[mine] or (RANK[theirs] == RANK[mine] and theirs != mine):
                wrong.append(f"{module} ({mine}) imports {target} ({theirs})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_even_through_function_local_imports():
    edges = graph()
    cycles = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(edges.get(module, ())):
            if target == "lockgate":
                continue  # the root's names are imported lazily, on first use
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)
    assert not cycles, "\n".join(cycles)


def test_the_contract_would_catch_a_breach(tmp_path):
    """The checks read real imports: an upward one and a circle through a function are seen."""
    known = {"lockgate.kernel.a": tmp_path / "a.py", "lockgate.gateway.b": tmp_path / "b.py"}
    known["lockgate.kernel.a"].write_text("def f():\n    from lockgate.gateway import b\n")
    known["lockgate.gateway.b"].write_text("from lockgate.kernel.a import f\n")
    assert imports(known["lockgate.kernel.a"], known) == {"lockgate.gateway.b"}
    assert imports(known["lockgate.gateway.b"], known) == {"lockgate.kernel.a"}
