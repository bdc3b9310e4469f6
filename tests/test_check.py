"""`lockgate check`: every problem of every file in one run, with `file:line`, never a
traceback; start-up says the same; and what check passes, the first requests do not fail on."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from starlette.testclient import TestClient

from lockgate.proxy import app as app_module
from lockgate.proxy import live as live_module
from lockgate.proxy.checks import inspect, named_models
from tests.conftest import ROOT
from tests.examples import examples_on, repoint

BROKEN = ROOT / "tests" / "data" / "broken"
UNSET = ("LOCKGATE_TEST_UNSET_KEY", "LOCKGATE_TEST_UNSET_MASTER")
MASTER = "sk-lg-test-check-master"


def planted(directory: Path) -> list[tuple[Path, int, str]]:
    """(file, line, text) for each `# expect: text` marker in the directory's YAML files."""
    found = []
    for path in sorted(directory.glob("*.yaml")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "# expect:" in line:
                for text in line.split("# expect:", 1)[1].split("| expect:"):
                    found.append((path, number, text.strip()))
    return found


def run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    return subprocess.run([sys.executable, "-m", "lockgate.proxy.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("command", ["check", "serve"])
def test_every_planted_problem_of_every_file_is_reported_with_its_line(command):
    result = run(command, "--config", str(BROKEN / "gateway.yaml"), *(["--port", "0"] if command == "serve" else []))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    problems = result.stderr.strip().splitlines()
    assert problems[-1] == f"{len(problems) - 1} problems found"
    problems = problems[:-1]
    expected = planted(BROKEN)
    # budget.yaml must parse for its refusal of unpriced models to be checked: that problem is in gateway.yaml
    assert {path.name for path, _, _ in expected} == {p.name for p in BROKEN.glob("*.yaml")} - {"budget.yaml"}
    for path, line, text in expected:
        assert any(p.startswith(f"{path}:{line}: ") and text in p for p in problems), (path.name, line, text, problems)
    assert len(problems) == len(expected), "nothing is reported that was not planted:\n" + "\n".join(problems)


def test_a_yaml_syntax_error_in_gateway_yaml_is_one_line_not_a_traceback(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text("models:\n  - name: a\n    deployments: [\n")
    result = run("check", "--config", str(path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert re.match(rf"{re.escape(str(path))}:\d+: ", result.stderr)


# -- check and the first requests agree -------------------------------------------------------
def readme_blocks() -> dict[str, str]:
    """The README's example of gateway.yaml and of each policy file, by file name."""
    text = (ROOT / "README.md").read_text()
    blocks = {}
    for name in ("gateway", "auth", "throttle", "budget", "cache", "rewrite", "fallback"):
        heading = re.search(rf"^##+ [^\n]*`{name}\.yaml`[^\n]*$", text, re.M)
        assert heading, f"README has a section for {name}.yaml"
        block = re.search(r"```yaml\n(.*?)```", text[heading.end() :], re.S)
        blocks[name] = block.group(1)
    return blocks


def readme_case(tmp_path: Path, fake_url: str) -> Path:
    blocks = readme_blocks()
    config = repoint(yaml.safe_load(blocks["gateway"]), fake_url)
    order = ["auth", "throttle", "budget", "rewrite", "cache", "fallback"]  # the README's recommended order
    config["middleware"] = [{name: f"{name}.yaml"} for name in order]
    for name in order:
        # the master key first, then a key of its own for each other `<hex>`
        digests = iter([MASTER] + [f"sk-lg-test-key-{i}" for i in range(10)])
        text = re.sub('"<hex>"', lambda _: '"' + hashlib.sha256(next(digests).encode()).hexdigest() + '"', blocks[name])
        (tmp_path / f"{name}.yaml").write_text(text)
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return tmp_path / "gateway.yaml"


def policies_case(tmp_path: Path, fake_url: str) -> Path:
    """policies/ with every example alias, rule and chain its files keep off turned on."""
    for path in (ROOT / "policies").glob("*.yaml"):
        text = path.read_text()
        assert path.stem not in ("rewrite", "fallback") or examples_on(text) != text, f"{path.name} ships its examples"
        (tmp_path / path.name).write_text(examples_on(text))
    config = repoint(yaml.safe_load((tmp_path / "gateway.yaml").read_text()), fake_url)
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return tmp_path / "gateway.yaml"


def flagged(problem: str) -> tuple[str, str] | None:
    """(file's kind, model) when check's problem is about a model name."""
    if m := re.search(r"names model '([^']+)'", problem):
        return Path(problem.split(":", 1)[0]).stem, m.group(1)
    if m := re.search(r"model '([^']+)' has no known price", problem):
        return "budget", m.group(1)
    return None


def failing_first_requests(path: Path, monkeypatch) -> set[tuple[str, str]]:
    """Each model name a layer sends inward, requested where that layer sends it: through
    an app made of only the layers inside it (for a budget: from the budget inward, which
    is where it prices the served model). (kind, model) for each that fails."""
    for module in (app_module, live_module):  # serve what check refuses, to see it fail
        monkeypatch.setattr(module, "cross_check", lambda *args, **kwargs: [])
    config = yaml.safe_load(path.read_text())
    stack = [next(iter(entry)) for entry in config["middleware"]]
    layers = {layer.kind: layer for layer in app_module.build_middleware(app_module.load_config(path), app_module.open_store({"backend": "memory"})).layers}
    failed = set()
    for index, kind in enumerate(stack):
        if kind == "budget":
            names, inner = [m["name"] for m in config["models"]], stack[index:]
        else:
            names, inner = [name for _, _, _, name in named_models(layers[kind], None)], stack[index + 1 :]
        if not names:
            continue
        sub = path.with_name(f"gateway.{kind}.yaml")
        sub.write_text(yaml.safe_dump({**config, "middleware": [e for e in config["middleware"] if next(iter(e)) in inner]}, sort_keys=False))
        with TestClient(app_module.create_app(sub)) as client:
            for name in names:
                answer = client.post("/v1/chat/completions", json={"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
                                     headers={"Authorization": f"Bearer {MASTER}", "x-lockgate-user": "first-request"})
                code = answer.json().get("error", {}).get("code") if answer.status_code != 200 else None
                assert answer.status_code == 200 or code in ("model_not_found", "unknown_price"), (kind, name, answer.text)
                # a budget fails a name by its price; a 404 past it is an inner layer's (a rule's) doing
                if code == ("unknown_price" if kind == "budget" else "model_not_found"):
                    failed.add((kind, name))
    return failed


@pytest.mark.parametrize("case", [policies_case, readme_case], ids=["policies", "readme"])
def test_check_and_the_first_requests_agree(case, fake, upstream, tmp_path, monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_API_KEY_2", "AZURE_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.setenv(name, "sk-test")
    path = case(tmp_path, fake.url)
    report = inspect(path)
    assert all(flagged(p) for p in report.problems), f"only model problems here, not: {report.problems}"
    reported = {flagged(p) for p in report.problems}
    failed = failing_first_requests(path, monkeypatch)
    assert reported == failed, f"check reported {sorted(reported - failed)} that serve; requests failed on {sorted(failed - reported)} that check passed"
    if case is policies_case:
        assert report.problems == [] and failed == set(), "the example config make run serves is clean"
