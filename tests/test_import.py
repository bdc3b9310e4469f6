"""`lockgate import litellm|guide`: real LiteLLM configs written as LiteLLM's docs show
each feature, every YAML block of the seed document, bad inputs; each output passes
`lockgate check` (the real CLI) and holds what the input said; one imported config
serves end to end against the fake upstream."""

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

from lockgate.middleware import auth, budget, cache, fallback, rewrite, throttle
from lockgate.proxy.config import load_config, load_yaml
from tests.conftest import ROOT, start_gateway

DATA = ROOT / "tests" / "data"
LITELLM = DATA / "litellm"
SEED = DATA / "seed-litellm-proxy-overview.md"
# every variable the imported configs read, so `lockgate check` can expand them
ENV = {name: f"test-{name.lower()}" for name in (
    "OPENAI_API_KEY", "AZURE_API_KEY", "AZURE_API_BASE", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "AZURE_API_KEY_EASTUS", "AZURE_API_KEY_WESTUS",
    "REDIS_HOST", "REDIS_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "COHERE_API_KEY", "GROQ_API_KEY", "GROQ_API_KEY_2",
    "MISTRAL_API_KEY", "DEEPSEEK_API_KEY", "TOGETHERAI_API_KEY", "FIREWORKS_AI_API_KEY", "OPENROUTER_API_KEY", "XAI_API_KEY",
    "PERPLEXITYAI_API_KEY", "OPENAI_COMPATIBLE_BASE_URL", "JINA_AI_API_KEY", "VOYAGE_API_KEY")}
ENV.update({"AZURE_API_BASE": "https://res.openai.azure.com", "REDIS_HOST": "127.0.0.1", "AWS_REGION_NAME": "us-east-1",
            "OPENAI_COMPATIBLE_BASE_URL": "http://127.0.0.1:9/v1", "HOME": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"})


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lockgate.proxy.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **ENV, **(env or {})})


class Imported:
    def __init__(self, directory: Path, output: str) -> None:
        self.dir = directory
        self.output = output
        self.config = load_config(directory / "gateway.yaml")
        self.text = (directory / "gateway.yaml").read_text()

    def policy(self, module):
        name = module.__name__.rsplit(".", 1)[-1]
        path = self.dir / f"{name}.yaml"
        assert path.exists(), f"{name}.yaml was not written"
        return module.parse_policy(load_yaml(path), str(path))

    def has(self, name: str) -> bool:
        return (self.dir / f"{name}.yaml").exists()

    def deployments(self, model: str) -> list:
        return list(self.config.models[model].deployments)


def do_import(kind: str, source: Path, out: Path, env: dict | None = None) -> Imported:
    result = cli("import", kind, str(source), "-o", str(out), env=env)
    assert result.returncode == 0, result.stderr
    check = cli("check", "--config", str(out / "gateway.yaml"), env=env)
    assert check.returncode == 0, check.stderr + check.stdout
    assert ": ok (" in check.stdout
    old = os.environ.copy()
    os.environ.update(ENV)
    os.environ.update(env or {})
    try:
        return Imported(out, result.stdout)
    finally:
        os.environ.clear()
        os.environ.update(old)


def litellm(name: str, tmp_path: Path, env: dict | None = None) -> Imported:
    return do_import("litellm", LITELLM / name, tmp_path / "out", env)


# -- LiteLLM configs -------------------------------------------------------------------


def test_quickstart(tmp_path):
    out = litellm("01-quickstart.yaml", tmp_path)
    assert list(out.config.models) == ["gpt-3.5-turbo", "gpt-4o", "claude-3-5-sonnet", "gemini-flash"]
    azure = out.deployments("gpt-3.5-turbo")[0]
    assert (azure.provider, azure.model, azure.base_url, azure.api_version, azure.api_key) == (
        "azure", "my_azure_deployment", "https://res.openai.azure.com", "2024-07-01-preview", ENV["AZURE_API_KEY"])
    assert [(d.provider, d.model) for m in ("gpt-4o", "claude-3-5-sonnet", "gemini-flash") for d in out.deployments(m)] == [
        ("openai", "gpt-4o"), ("anthropic", "claude-3-5-sonnet-20241022"), ("gemini", "gemini-1.5-flash")]
    assert 'api_key: "${ANTHROPIC_API_KEY}"' in out.text or "api_key: ${ANTHROPIC_API_KEY}" in out.text
    keys = out.policy(auth)
    assert keys.master is not None and keys.master.digest == hashlib.sha256(b"sk-1234").digest()
    assert "sk-1234" not in "".join(p.read_text() for p in out.dir.iterdir()) + out.output, "only the master key's sha256"
    assert [name for name, _ in out.config.middleware] == ["auth"]


def test_load_balancing(tmp_path):
    out = litellm("02-load-balancing.yaml", tmp_path)
    model = out.config.models["gpt-4o"]
    assert [(d.provider, d.model, d.weight) for d in model.deployments] == [
        ("azure", "gpt-4o-eastus", 900), ("azure", "gpt-4o-westus", 600), ("openai", "gpt-4o", 500)]
    assert model.balance == "weighted"
    assert len({d.id for d in model.deployments}) == 3
    limits = out.policy(throttle).limits
    assert [(l.per, l.rpm, l.tpm) for l in limits] == [("model", 2000, 200000)]
    assert out.config.store.backend == "redis" and out.config.store.url == f"redis://:{ENV['REDIS_PASSWORD']}@127.0.0.1:6379/0"
    assert "enable_pre_call_checks" in out.text and "usage-based-routing-v2" in out.output


def test_reliability(tmp_path):
    out = litellm("03-reliability.yaml", tmp_path)
    policy = out.policy(fallback)
    assert policy.chains == {"gpt-4": ("gpt-3.5-turbo", "claude-3-haiku"), "*": ("claude-3-haiku",)}
    assert policy.context_window == {"gpt-3.5-turbo": "gpt-3.5-turbo-16k"}
    assert dict(policy.retries) == {"*": 2}
    assert out.config.models["gpt-4"].cooldown_failures == 3 and out.config.models["gpt-4"].cooldown_s == 30
    assert out.deployments("gpt-4")[0].timeout_s == 60 and out.deployments("gpt-3.5-turbo")[0].timeout_s == 30
    assert "gpt-4 not carried over" in out.output and "content_policy_fallbacks" in out.output


def test_caching(tmp_path):
    out = litellm("04-caching.yaml", tmp_path)
    policy = out.policy(cache)
    assert policy.ttl_s == 600 and policy.scope == "global" and policy.models == ("*",)
    assert out.config.store.backend == "redis" and out.config.store.url == f"redis://:{ENV['REDIS_PASSWORD']}@localhost:6379/0"
    assert out.deployments("gpt-4o-mini")[0].provider == "openai"
    for carried_not in ("cache_params.namespace", "cache_params.supported_call_types", "set_verbose"):
        assert carried_not in out.output and carried_not in out.text


def test_budgets_and_a_master_key_from_the_environment(tmp_path):
    out = litellm("05-budgets.yaml", tmp_path, env={"LITELLM_MASTER_KEY": "sk-from-env"})
    policy = out.policy(budget)
    assert [(b.dimension, b.name, b.limit_usd, b.period) for b in policy.budgets.values()] == [("key", "master", 10.0, "monthly")]
    assert (policy.default.dimension, policy.default.limit_usd, policy.default.period) == ("user", 2.5, "daily")
    assert out.policy(auth).master.digest == hashlib.sha256(b"sk-from-env").digest()
    assert [(l.per, l.concurrent) for l in out.policy(throttle).limits] == [("global", 100)]
    assert "database_url: (set)" in out.output and "DATABASE_URL" not in out.text.replace("database_url", "")
    unset = litellm("05-budgets.yaml", tmp_path / "unset", env={"LITELLM_MASTER_KEY": ""})
    assert unset.policy(auth).master is None and "LITELLM_MASTER_KEY, which was not set" in unset.output


def test_local_models(tmp_path):
    out = litellm("06-local-models.yaml", tmp_path)
    got = {name: out.deployments(name)[0] for name in out.config.models}
    assert (got["llama3"].provider, got["llama3"].model, got["llama3"].base_url) == ("ollama", "llama3.1:8b", "http://localhost:11434/v1")
    assert (got["qwen"].provider, got["qwen"].model, got["qwen"].base_url, got["qwen"].timeout_s) == ("vllm", "Qwen/Qwen2.5-7B-Instruct", "http://vllm.internal:8000/v1", 120)
    assert (got["phi"].provider, got["phi"].base_url) == ("lmstudio", "http://localhost:1234/v1")
    assert (got["tgi"].provider, got["tgi"].api_key) == ("openai", None), "an OpenAI-compatible server gets no OpenAI key"
    assert (got["tgi"].price.input_per_mtok, got["tgi"].price.output_per_mtok) == (0.2, 0.6)
    assert dict(out.config.models["llama3"].info) == {"max_input_tokens": 131072, "max_tokens": 4096, "mode": "chat"}


def test_clouds(tmp_path):
    sa = tmp_path / "vertex-sa.json"
    sa.write_text('{"type": "service_account", "project_id": "p", "private_key": "(not read by check)", "client_email": "a@p.iam.gserviceaccount.com"}')
    out = litellm("07-clouds.yaml", tmp_path, env={"VERTEX_SA_FILE": str(sa)})
    gemini, claude = out.deployments("gemini-1.5-pro")[0], out.deployments("claude-vertex")[0]
    assert (gemini.provider, gemini.model, gemini.options["project"], gemini.options["location"]) == ("vertex", "gemini-1.5-pro", "my-gcp-project", "us-central1")
    assert (claude.model, claude.options["location"]) == ("claude-3-5-sonnet-v2@20241022", "us-east5")
    bedrock = out.deployments("claude-bedrock")[0]
    assert (bedrock.provider, bedrock.model, bedrock.options["region"]) == ("bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0", "us-east-1")
    titan = out.deployments("titan-embed")[0]
    assert (titan.model, titan.options["region"]) == ("amazon.titan-embed-text-v2:0", "us-east-1")
    assert "aws_profile: prod" in out.text and "credentials: ${VERTEX_SA_FILE}" in out.text
    assert "vertex_credentials comes from ${VERTEX_SA_FILE}" in out.output
    assert (out.deployments("command-r")[0].provider, out.deployments("command-r")[0].model) == ("cohere", "command-r-plus")


def test_routing_aliases_and_prices(tmp_path):
    out = litellm("08-routing-aliases.yaml", tmp_path)
    model = out.config.models["production-gpt-4"]
    assert model.balance == "lowest_latency"
    assert [d.id for d in model.deployments] == ["openai-primary", "azure-backup"]
    assert (model.deployments[1].price.input_per_mtok, model.deployments[1].price.output_per_mtok) == (2.5, 10.0)
    assert out.policy(rewrite).aliases == {"gpt-4": "production-gpt-4", "gpt-4-internal": "production-gpt-4"}
    assert "hidden" in out.output and "routing_strategy_args" in out.output


def test_what_cannot_be_carried_over_is_reported_never_leaked(tmp_path):
    out = litellm("09-observability.yaml", tmp_path)
    for thing in ("success_callback", "failure_callback", "callbacks", "guardrails", "alerting", "proxy_batch_write_at",
                  "environment_variables.LANGFUSE_SECRET_KEY", "credential_list"):
        assert thing in out.output, thing
        assert thing in out.text, thing
    everything = out.output + "".join(p.read_text() for p in out.dir.iterdir())
    for secret in ("sk-lf-very-secret", "pk-lf-public", "hooks.slack.com", "sk-observability-master"):
        assert secret not in everything
    assert out.policy(auth).master.digest == hashlib.sha256(b"sk-observability-master").digest()


def test_hosted_presets(tmp_path):
    out = litellm("10-hosted-presets.yaml", tmp_path)
    pool = out.config.models["llama-70b"]
    assert [(d.provider, d.api_key) for d in pool.deployments] == [("groq", ENV["GROQ_API_KEY"]), ("groq", ENV["GROQ_API_KEY_2"])]
    assert pool.balance == "least_busy"
    expected = {
        "mistral-large": ("mistral", "mistral-large-latest", "MISTRAL_API_KEY"),
        "deepseek-chat": ("deepseek", "deepseek-chat", "DEEPSEEK_API_KEY"),
        "llama-405b": ("together", "meta-llama/Meta-Llama-3.1-405B-Instruct-Turbo", "TOGETHERAI_API_KEY"),
        "llama-fireworks": ("fireworks", "accounts/fireworks/models/llama-v3p1-70b-instruct", "FIREWORKS_AI_API_KEY"),
        "router-claude": ("openrouter", "anthropic/claude-3.5-sonnet", "OPENROUTER_API_KEY"),
        "grok": ("xai", "grok-3", "XAI_API_KEY"),
        "sonar": ("perplexity", "sonar-pro", "PERPLEXITYAI_API_KEY"),
    }
    for name, (provider, model, variable) in expected.items():
        dep = out.deployments(name)[0]
        assert (dep.provider, dep.model, dep.api_key) == (provider, model, ENV[variable]), name


def test_rerank_images_and_audio_models(tmp_path):
    out = litellm("11-rerank-images-voice.yaml", tmp_path)
    expected = {
        "rerank-english": ("cohere", "rerank-english-v3.0", ENV["COHERE_API_KEY"]),
        "jina-rerank": ("jina", "jina-reranker-v2-base-multilingual", ENV["JINA_AI_API_KEY"]),
        "voyage-rerank": ("voyage", "rerank-2", ENV["VOYAGE_API_KEY"]),
        "dall-e-3": ("openai", "dall-e-3", ENV["OPENAI_API_KEY"]),
        "whisper": ("openai", "whisper-1", ENV["OPENAI_API_KEY"]),
        "tts": ("openai", "tts-1", ENV["OPENAI_API_KEY"]),
    }
    for name, (provider, model, key) in expected.items():
        dep = out.deployments(name)[0]
        assert (dep.provider, dep.model, dep.api_key) == (provider, model, key), name


@pytest.mark.parametrize("name", sorted(p.name for p in LITELLM.glob("*.yaml")))
def test_import_is_deterministic(tmp_path, name):
    first = cli("import", "litellm", str(LITELLM / name), "-o", str(tmp_path / "a"))
    second = cli("import", "litellm", str(LITELLM / name), "-o", str(tmp_path / "b"))
    assert first.returncode == second.returncode == 0
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for file in files:
        assert (tmp_path / "a" / file).read_text() == (tmp_path / "b" / file).read_text()


@pytest.mark.parametrize("text,message", [
    ("model_list: [\n  - model_name: x\n", "not valid YAML"),
    ("- model_name: gpt-4o\n  litellm_params: {model: gpt-4o}\n", "is a mapping"),
    ("model_list:\n  - model_name: sm\n    litellm_params: {model: sagemaker/jumpstart-llama}\n", "unknown provider prefix 'sagemaker/'"),
    ("model_list:\n  - litellm_params: {model: openai/gpt-4o}\n", "model_name is missing"),
    ("model_list:\n  - model_name: x\n", "litellm_params.model is missing"),
    ("", "empty"),
])
def test_bad_inputs_exit_non_zero_and_write_nothing(tmp_path, text, message):
    source = tmp_path / "config.yaml"
    source.write_text(text)
    result = cli("import", "litellm", str(source), "-o", str(tmp_path / "out"))
    assert result.returncode == 1
    assert message in result.stderr and "Nothing was written" in result.stderr
    assert not (tmp_path / "out").exists()


def test_every_problem_is_reported_at_once(tmp_path):
    source = tmp_path / "config.yaml"
    source.write_text("model_list:\n  - litellm_params: {model: openai/a}\n  - model_name: b\n    litellm_params: {model: replicate/b}\n")
    result = cli("import", "litellm", str(source), "-o", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "model_list[0]: model_name is missing" in result.stderr and "model_list[1] (b): unknown provider prefix" in result.stderr


# -- the seed document's YAML -----------------------------------------------------------------


def seed_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", SEED.read_text(), re.DOTALL)


def test_the_seed_copy_is_the_shared_document():
    shared = ROOT.parent / "shared" / "background" / "litellm-proxy-overview-for-onyx.md"
    if shared.exists():
        assert shared.read_text() == SEED.read_text()
    assert len(seed_blocks()) == 9


def guide(tmp_path: Path, index: int) -> Imported:
    source = tmp_path / f"block{index}.yaml"
    source.write_text(seed_blocks()[index])
    return do_import("guide", source, tmp_path / "out")


def models_of(out: Imported) -> dict:
    return {name: (m.deployments[0].provider, m.deployments[0].model) for name, m in out.config.models.items()}


def rules_of(out: Imported) -> list:
    return [(r.label, r.model) for r in out.policy(rewrite).rules]


def test_seed_routing_rules_by_task(tmp_path):
    out = guide(tmp_path, 0)
    assert rules_of(out) == [("task-simple-qa", "gpt-3.5-turbo"), ("task-complex-analysis", "gpt-4")]
    assert out.policy(rewrite).trust_client_fields
    assert "task_type == 'simple_qa'" in (out.dir / "rewrite.yaml").read_text()
    assert models_of(out) == {"gpt-3.5-turbo": ("openai", "gpt-3.5-turbo"), "gpt-4": ("openai", "gpt-4")}


def test_seed_models_with_fallbacks(tmp_path):
    out = guide(tmp_path, 1)
    assert out.policy(fallback).chains == {"gpt-4": ("gpt-3.5-turbo", "claude-3-sonnet")}
    assert models_of(out) == {"gpt-4": ("openai", "gpt-4"), "gpt-3.5-turbo": ("openai", "gpt-3.5-turbo"), "claude-3-sonnet": ("anthropic", "claude-3-sonnet")}


def test_seed_routing_by_condition(tmp_path):
    out = guide(tmp_path, 2)
    text = (out.dir / "rewrite.yaml").read_text()
    assert "condition: user_tier == 'premium'" in text and "condition: user_tier == 'basic'" in text
    assert [model for _, model in rules_of(out)] == ["gpt-4", "gpt-3.5-turbo"]
    assert not out.policy(rewrite).trust_client_fields, "user_tier comes from auth, not the client"


def test_seed_caching(tmp_path):
    out = guide(tmp_path, 3)
    policy = out.policy(cache)
    assert (policy.ttl_s, policy.scope, policy.trust_client_user) == (3600, "user", True)
    assert out.config.models == {} and out.config.warnings


def test_seed_budget_per_user(tmp_path):
    out = guide(tmp_path, 4)
    assert [(b.dimension, b.name, b.limit_usd, b.period) for b in out.policy(budget).budgets.values()] == [("user", "user123", 100.0, "monthly")]
    assert out.config.models == {}


def test_seed_load_balancing(tmp_path):
    out = guide(tmp_path, 5)
    model = out.config.models["openai"]
    assert model.balance == "round_robin"
    assert [(d.provider, d.api_key) for d in model.deployments] == [("openai", "key1"), ("openai", "key2"), ("openai", "key3")]
    assert "a guess" in out.output and "3 api_keys are written in the file itself" in out.output


def test_seed_models_by_feature(tmp_path):
    out = guide(tmp_path, 6)
    assert rules_of(out) == [("feature-search-qa", "gpt-3.5-turbo"), ("feature-document-analysis", "gpt-4"), ("feature-summarization", "claude-3-sonnet")]
    assert out.policy(rewrite).trust_client_fields


def test_seed_team_budgets(tmp_path):
    out = guide(tmp_path, 7)
    assert [(b.dimension, b.name, b.limit_usd, b.period) for b in out.policy(budget).budgets.values()] == [
        ("team", "engineering", 50.0, "daily"), ("team", "marketing", 200.0, "daily")]


def test_seed_fallbacks_between_providers_keep_both_fallbacks(tmp_path):
    out = guide(tmp_path, 8)
    assert out.policy(fallback).chains == {"openai": ("anthropic", "azure")}, "the repeated `fallback:` key keeps both"
    assert models_of(out) == {"anthropic": ("anthropic", "claude-3-5-sonnet-20241022"), "azure": ("azure", "gpt-4o"), "openai": ("openai", "gpt-4o")}


def test_a_whole_guide_at_once(tmp_path):
    source = tmp_path / "guide.yaml"
    source.write_text(
        "routing:\n  - condition: \"hour >= 9 && hour <= 17\"\n    model: gpt-4o\n"
        "rate_limits:\n  - {user_id: alice, requests_per_minute: 30}\n  - {model: gpt-4o, tokens_per_minute: 100000}\n"
        "budget_limits:\n  - {team: research, daily_limit: 5, monthly_limit: 100, currency: EUR}\n"
        "load_balancing:\n  - {provider: openai, api_keys: [os.environ/OPENAI_KEY_A, os.environ/OPENAI_KEY_B], strategy: least_busy}\n"
        "monitoring: {enabled: true}\n"
    )
    out = do_import("guide", source, tmp_path / "out", env={"OPENAI_KEY_A": "a", "OPENAI_KEY_B": "b"})
    assert [d.api_key for d in out.config.models["gpt-4o"].deployments] == ["a", "b"] and out.config.models["gpt-4o"].balance == "least_busy"
    assert [(l.per, l.rpm, l.tpm) for l in out.policy(throttle).limits] == [("user", 30, None), ("model", None, 100000)]
    assert [(b.name, b.period) for b in out.policy(budget).budgets.values()] == [("research", "daily")]
    for note in ("monthly_limit not carried over", "currency EUR", "monitoring"):
        assert note in out.output and note in out.text


def test_guide_bad_inputs(tmp_path):
    for text, message in (("- a\n- b\n", "is a mapping"), ("routing:\n  - {model: gpt-4}\n", "needs task or condition"), ("x: [\n", "not valid YAML")):
        source = tmp_path / "guide.yaml"
        source.write_text(text)
        result = cli("import", "guide", str(source), "-o", str(tmp_path / "out"))
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert not (tmp_path / "out").exists()


# -- served -----------------------------------------------------------------------------


def test_an_imported_config_serves_end_to_end(fake, upstream, tmp_path):
    source = tmp_path / "config.yaml"
    source.write_text(f"""
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/imp-primary
      api_base: {fake.url}/v1
      api_key: os.environ/IMPORT_OPENAI_KEY
  - model_name: claude
    litellm_params:
      model: anthropic/imp-backup
      api_base: {fake.url}
      api_key: os.environ/IMPORT_ANTHROPIC_KEY
router_settings:
  fallbacks: [{{"gpt-4o": ["claude"]}}]
  model_group_alias: {{gpt-4: gpt-4o}}
litellm_settings:
  cache: true
  cache_params: {{type: local, ttl: 60}}
general_settings:
  master_key: sk-imported-master
""")
    env = {"IMPORT_OPENAI_KEY": "sk-imp-openai", "IMPORT_ANTHROPIC_KEY": "sk-ant-imp"}
    out = do_import("litellm", source, tmp_path / "out", env=env)
    config = yaml.safe_load((out.dir / "gateway.yaml").read_text())
    config["store"] = {"backend": "disk", "path": str(tmp_path / "state")}
    gw = start_gateway(config, out.dir, env=env)
    try:
        body = {"model": "gpt-4", "messages": [{"role": "user", "content": "imported"}]}
        assert httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=10).status_code == 401
        headers = {"authorization": "Bearer sk-imported-master"}
        first = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=10)
        assert first.status_code == 200, first.text
        assert first.json()["choices"][0]["message"]["content"] == "echo: imported"
        assert first.headers["x-lockgate-model"] == "gpt-4o" and first.headers["x-lockgate-cache"] == "miss"
        assert upstream.requests[-1].headers["authorization"] == "Bearer sk-imp-openai"
        again = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=10)
        assert again.headers["x-lockgate-cache"] == "hit"
        upstream.set("imp-primary", status=500)
        body["messages"][0]["content"] = "fall back"
        moved = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=10)
        assert moved.status_code == 200 and moved.headers["x-lockgate-fallback"] == "gpt-4o, claude"
        assert upstream.requests[-1].path == "/v1/messages"
    finally:
        gw.stop()


def test_the_readme_migration_commands_work_as_printed(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Coming from LiteLLM", 1)[1]
    commands = re.search(r"```sh\n(.*?)```", section, re.DOTALL).group(1)
    (tmp_path / "config.yaml").write_text((LITELLM / "01-quickstart.yaml").read_text())
    for line in commands.splitlines():
        command = line.split("#", 1)[0].split()
        if command[:2] in (["lockgate", "import"], ["lockgate", "check"]):
            result = subprocess.run([sys.executable, "-m", "lockgate.proxy.cli", *command[1:]], cwd=tmp_path, capture_output=True, text=True,
                                    timeout=60, env={**os.environ, **ENV, "PYTHONPATH": str(ROOT)})
            assert result.returncode == 0, (line, result.stderr)
    assert (tmp_path / "lockgate" / "gateway.yaml").exists() and (tmp_path / "lockgate" / "auth.yaml").exists()
