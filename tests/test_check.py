"""`lockgate check`: every problem of every file in one run, with `file:line`, never a
traceback; start-up says the same; and what check passes, the first requests do not fail on."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from starlette.testclient import TestClient

from lockgate.gateway import app as app_module
from lockgate.gateway import live as live_module
from lockgate.gateway import stack as stack_module
from lockgate.gateway.checks import inspect, layers_of, named_models
from lockgate.kernel.store.memory import MemoryStore
from lockgate.proxy.models import ConfigCatalog
from tests.conftest import ROOT, start_gateway
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
    return subprocess.run([sys.executable, "-m", "lockgate.gateway.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)


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
        text = re.sub('"<hex>"', lambda _, digests=digests: '"' + hashlib.sha256(next(digests).encode()).hexdigest() + '"', blocks[name])
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
    loaded = app_module.load_config(path)
    built = stack_module.build(loaded.middleware, loaded.source, stack_module.Services(MemoryStore(), ConfigCatalog(lambda: loaded.models)))
    layers = {layer.kind: layer for layer in layers_of(built.mounted)}
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


# -- a deployment whose key is empty --------------------------------------------------------
EMPTY = "LOCKGATE_TEST_EMPTY_KEY"


def empty_key_models(fake_url: str) -> list[dict]:
    key = {"api_key": f"${{{EMPTY}:-}}"}
    return [
        {"name": "gpt-4o", "deployments": [{"provider": "openai", "model": "gpt-4o", "base_url": fake_url + "/v1", **key}]},
        {"name": "claude", "deployments": [{"provider": "anthropic", "model": "claude-3-5-sonnet-20241022", "base_url": fake_url, **key}]},
        {"name": "gpt-rt", "deployments": [{"provider": "openai", "model": "gpt-4o-realtime-preview", "base_url": fake_url + "/v1", **key}]},
        {"name": "local", "deployments": [{"provider": "openai", "model": "llama", "base_url": fake_url + "/v1"}]},  # no api_key: sends none
    ]


@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_check_warns_of_an_empty_key_naming_model_deployment_and_variable(value, tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"models": empty_key_models("http://127.0.0.1:9")}, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != EMPTY} | ({EMPTY: value} if value is not None else {})
    result = subprocess.run(
        [sys.executable, "-m", "lockgate.gateway.cli", "check", "--config", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 3, "one for each deployment whose key is empty, none for the one that sets no key"
    lines = {i for i, text in enumerate(path.read_text().splitlines(), 1) if EMPTY in text}
    for warning, (model, dep) in zip(
        warnings, [("gpt-4o", "openai/gpt-4o"), ("claude", "anthropic/claude-3-5-sonnet-20241022"), ("gpt-rt", "openai/gpt-4o-realtime-preview")], strict=False
    ):
        where, _, message = warning.partition(": warning: ")
        assert where.startswith(f"{path}:") and int(where.rsplit(":", 1)[1]) in lines, warning
        assert f"model '{model}'" in message and f"deployment {dep}" in message and f"api_key is empty ({EMPTY} is not set or empty)" in message


async def test_a_request_to_a_deployment_whose_key_is_empty_names_the_variable_and_calls_nothing(fake, upstream, tmp_path):
    from anthropic import Anthropic
    from openai import APIStatusError, OpenAI

    env = {EMPTY: ""}
    gw = start_gateway({"models": empty_key_models(fake.url)}, tmp_path, env=env)
    try:
        client = OpenAI(base_url=gw.url + "/v1", api_key="anything", max_retries=0)
        for stream in (False, True):
            with pytest.raises(APIStatusError) as refused:
                client.chat.completions.create(model="gpt-4o", stream=stream, messages=[{"role": "user", "content": "hi"}])
            error = refused.value.body
            assert refused.value.status_code == 502 and error["code"] == "upstream_auth_failed", error
            assert error["message"] == (f"Deployment openai/gpt-4o: its api_key is empty: the environment variable {EMPTY} is not set (or empty) "
                                        "where lockgate runs; set it and restart lockgate")
        with pytest.raises(Exception) as refused_messages:
            Anthropic(base_url=gw.url, api_key="anything", max_retries=0).messages.create(
                model="claude", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
        assert getattr(refused_messages.value, "status_code", None) == 502 and EMPTY in str(refused_messages.value)
        handshake = {"connection": "Upgrade", "upgrade": "websocket", "sec-websocket-version": "13", "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ=="}
        realtime = httpx.get(gw.url + "/v1/realtime?model=gpt-rt", headers=handshake)
        assert realtime.status_code == 502 and realtime.json()["error"]["code"] == "upstream_auth_failed" and EMPTY in realtime.json()["error"]["message"]
        assert upstream.requests == [] and upstream.realtime_handshakes == [], "nothing was sent upstream without its key"
        assert client.chat.completions.create(model="local", messages=[{"role": "user", "content": "hi"}]).choices[0].message.content == "echo: hi"
        assert "authorization" not in upstream.requests[-1].headers, "a deployment without api_key still sends none"
    finally:
        gw.stop()
