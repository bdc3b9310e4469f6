"""gateway.yaml: parsing, `${VAR}` expansion, `file:line: message` errors, `lockgate check`."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from lockgate.gateway.app import create_app
from lockgate.gateway.config import load_config
from lockgate.kernel.parsing import ConfigError
from tests.conftest import ROOT


def write(tmp_path, text: str):
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def problems(path) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(path)
    return err.value.problems


def test_example_config_loads():
    config = load_config(ROOT / "policies" / "gateway.yaml")
    assert "demo" in config.models
    assert config.models["demo"].deployments[0].provider == "mock"


def test_design_example_shape(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k1")
    monkeypatch.setenv("OPENAI_API_KEY_2", "k2")
    path = write(
        tmp_path,
        """
        server: {host: 127.0.0.1, port: 4000, max_body_bytes: 1000}
        store: {backend: memory}
        models:
          - name: gpt-4o-mini
            balance: weighted
            deployments:
              - {provider: openai, model: gpt-4o-mini, api_key: "${OPENAI_API_KEY}"}
              - {provider: openai, model: gpt-4o-mini, api_key: "${OPENAI_API_KEY_2}", weight: 2, timeout_s: 5,
                 price: {input_per_mtok: 0.15, output_per_mtok: 0.6}, headers: {X-Team: a}}
              - {provider: azure, model: dep, base_url: "https://res.openai.azure.com", api_version: "2024-10-21", api_key: "${OPENAI_API_KEY}"}
        """,
    )
    config = load_config(path)
    deps = config.models["gpt-4o-mini"].deployments
    assert [d.api_key for d in deps] == ["k1", "k2", "k1"]
    assert deps[1].weight == 2 and deps[1].timeout_s == 5 and deps[1].price.output_per_mtok == 0.6
    assert deps[1].headers == {"x-team": "a"}
    assert deps[0].id != deps[1].id, "two deployments of one model get distinct ids"
    assert "k1" not in deps[0].id and "k1" not in repr(deps[0])
    assert config.server.max_body_bytes == 1000 and config.store.backend == "memory"


def test_missing_env_var_names_it_with_its_line(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCKGATE_TEST_MISSING", raising=False)
    path = write(
        tmp_path,
        """
        models:
          - name: m
            deployments:
              - provider: openai
                model: x
                api_key: "${LOCKGATE_TEST_MISSING}"
        """,
    )
    assert problems(path) == [f"{path}:6: environment variable LOCKGATE_TEST_MISSING is not set"]


def test_env_default_syntax(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCKGATE_TEST_MISSING", raising=False)
    path = write(tmp_path, 'models: [{name: m, deployments: [{provider: openai, model: x, api_key: "${LOCKGATE_TEST_MISSING:-}"}]}]\n')
    assert load_config(path).models["m"].deployments[0].api_key is None


def test_every_problem_reported_with_lines(tmp_path):
    path = write(
        tmp_path,
        """
        store: {backend: postgres}
        models:
          - name: a
            balance: fastest
            deployments:
              - {provider: openia, model: x}
          - name: b
            deployments:
              - {provider: openai, model: y, timeout_s: -1, colour: blue}
          - name: a
            deployments: [{provider: mock}]
        middleware:
          - auth: policies/auth.yaml
          - firewall: x.yaml
        """,
    )
    found = problems(path)
    expected = [
        (1, "store backend must be one of"),
        (4, "balance must be one of"),
        (6, "provider must be one of"),
        (9, "timeout_s must be at least"),
        (9, "unknown key 'colour'"),
        (10, "model 'a' is defined twice"),
        (14, "unknown middleware 'firewall'"),
    ]
    for line, text in expected:
        assert any(p.startswith(f"{path}:{line}: ") and text in p for p in found), (line, text, found)


def test_yaml_syntax_error_has_a_line(tmp_path):
    path = write(tmp_path, "models:\n  - name: a\n    deployments: [\n")
    (problem,) = problems(path)
    assert problem.startswith(f"{path}:")
    assert problem.split(":")[1].isdigit()


def test_azure_needs_base_url(tmp_path):
    path = write(tmp_path, "models: [{name: a, deployments: [{provider: azure, model: d}]}]\n")
    assert any("azure deployment needs base_url" in p for p in problems(path))


def test_create_app_accepts_a_dict():
    app = create_app({"models": [{"name": "demo", "deployments": [{"provider": "mock"}]}]})
    assert app.state.config.models["demo"].deployments[0].model == "demo"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lockgate.gateway.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_check_cli_ok():
    result = run_cli("check", "--config", "policies/gateway.yaml")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_check_cli_reports_file_line_and_fails(tmp_path):
    path = write(tmp_path, "models:\n  - name: a\n    deployments:\n      - {provider: nope}\n")
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 1
    assert f"{path}:4: provider must be one of" in result.stderr


def test_serve_refuses_a_broken_config(tmp_path):
    path = write(tmp_path, "models: {a: b}\n")
    result = run_cli("serve", "--config", str(path), "--port", "0")
    assert result.returncode == 1
    assert "models" in result.stderr


def test_example_policies_parse_and_the_example_auth_accepts_no_key_until_one_is_added():
    from lockgate.kernel.parsing import load_yaml
    from lockgate.middleware import auth, budget, throttle

    policies = ROOT / "policies"
    keys = auth.parse_policy(load_yaml(policies / "auth.yaml"), "auth.yaml")
    assert keys.master is None and not keys.keys, "no key is accepted whose secret could be read in this repository"
    assert keys.find(b"sk-lockgate-demo-alice") is None and keys.find(b"sk-lockgate-demo-master") is None
    assert throttle.parse_policy(load_yaml(policies / "throttle.yaml"), "throttle.yaml").limits
    assert budget.parse_policy(load_yaml(policies / "budget.yaml"), "budget.yaml").default is not None


def test_yaml_reads_on_and_yes_as_strings_not_booleans(tmp_path):
    from lockgate.kernel.parsing import load_yaml
    from lockgate.middleware.fallback import parse_policy

    path = tmp_path / "fallback.yaml"
    path.write_text("chains: {a: [b]}\non: [429, timeout]\n")
    policy = parse_policy(load_yaml(path), str(path))
    assert policy.statuses == {429} and policy.kinds == {"timeout"}


def test_an_empty_models_list_is_accepted_with_a_warning(tmp_path):
    path = write(tmp_path, "store: {backend: memory}\nmodels: []\n")
    config = load_config(path)
    assert config.models == {} and config.warnings == (
        f"{path}:2: warning: `models:` is empty: every model request answers 404 model_not_found until one is added",
    )
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "warning: `models:` is empty" in result.stderr and "ok (0 models" in result.stdout
    missing = write(tmp_path, "store: {backend: memory}\n")
    with pytest.raises(ConfigError) as err:
        load_config(missing)
    assert "`models:` must be a list" in err.value.problems[0], "a missing models: is still a mistake"
