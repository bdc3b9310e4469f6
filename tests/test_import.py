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
from hypothesis import given, settings
from hypothesis import strategies as st

from lockgate.gateway.config import load_config
from lockgate.kernel.parsing import load_yaml
from lockgate.middleware import auth, budget, cache, fallback, rewrite, throttle
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
    return subprocess.run([sys.executable, "-m", "lockgate.gateway.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
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
    assert [(lim.per, lim.rpm, lim.tpm) for lim in limits] == [("model", 2000, 200000)]
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
    assert [(lim.per, lim.concurrent) for lim in out.policy(throttle).limits] == [("global", 100)]
    assert "general_settings.database_url" in out.output and "postgresql://" not in out.output + out.text
    unset = litellm("05-budgets.yaml", tmp_path / "unset", env={"LITELLM_MASTER_KEY": ""})
    assert unset.policy(auth).master is None and "LITELLM_MASTER_KEY, which was not set" in unset.output


def test_local_models(tmp_path):
    out = litellm("06-local-models.yaml", tmp_path)
    got = {name: out.deployments(name)[0] for name in out.config.models}
    assert (got["llama3"].provider, got["llama3"].model, got["llama3"].base_url) == ("ollama", "llama3.1:8b", "http://localhost:11434/v1")
    assert (got["qwen"].provider, got["qwen"].model, got["qwen"].base_url, got["qwen"].timeout_s) == (
        "vllm",
        "Qwen/Qwen2.5-7B-Instruct",
        "http://vllm.internal:8000/v1",
        120,
    )
    assert (got["phi"].provider, got["phi"].base_url) == ("lmstudio", "http://localhost:1234/v1")
    assert (got["tgi"].provider, got["tgi"].api_key) == ("openai", None), "an OpenAI-compatible server gets no OpenAI key"
    assert (got["tgi"].price.input_per_mtok, got["tgi"].price.output_per_mtok) == (0.2, 0.6)
    assert dict(out.config.models["llama3"].info) == {"max_input_tokens": 131072, "max_tokens": 4096, "mode": "chat"}


def test_clouds(tmp_path):
    sa = tmp_path / "vertex-sa.json"
    sa.write_text('{"type": "service_account", "project_id": "p", "private_key": "(not read by check)", "client_email": "a@p.iam.gserviceaccount.com"}')
    out = litellm("07-clouds.yaml", tmp_path, env={"VERTEX_SA_FILE": str(sa)})
    gemini, claude = out.deployments("gemini-1.5-pro")[0], out.deployments("claude-vertex")[0]
    assert (gemini.provider, gemini.model, gemini.options["project"], gemini.options["location"]) == (
        "vertex",
        "gemini-1.5-pro",
        "my-gcp-project",
        "us-central1",
    )
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
    ("model_list: [\n  - model_name: x\n", "config.yaml:2: "),
    ("- model_name: gpt-4o\n  litellm_params: {model: gpt-4o}\n", "is a mapping"),
    ("model_list: {gpt-4o: openai/gpt-4o}\n", "model_list must be a list"),
    ("router_settings: [fallbacks]\n", "router_settings must be a mapping"),
    ("", "empty"),
])
def test_bad_inputs_exit_non_zero_and_write_nothing(tmp_path, text, message):
    source = tmp_path / "config.yaml"
    source.write_text(text)
    result = cli("import", "litellm", str(source), "-o", str(tmp_path / "out"))
    assert result.returncode == 1
    assert message in result.stderr and "Nothing was written" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_model_that_cannot_be_imported_is_skipped_and_the_rest_imported(tmp_path):
    """One model lockgate has no provider for no longer sinks the whole import: the others
    are imported, and each one left out is listed with why, on the screen and in gateway.yaml.
    Chains and aliases that named a model left out lose it (also listed), so check passes."""
    source = tmp_path / "config.yaml"
    source.write_text("""
model_list:
  - model_name: gpt-4o
    litellm_params: {model: openai/gpt-4o, api_key: os.environ/OPENAI_API_KEY}
  - model_name: hf-llama
    litellm_params: {model: huggingface/meta-llama/Meta-Llama-3-8B-Instruct, api_key: os.environ/HF_TOKEN}
  - model_name: sm
    litellm_params: {model: sagemaker/jumpstart-llama}
  - litellm_params: {model: openai/nameless}
  - model_name: no-model
  - model_name: claude-bedrock
    litellm_params: {model: anthropic.claude-3-sonnet-20240229-v1:0, aws_region_name: us-west-2}
  - model_name: llama-bedrock
    litellm_params: {model: us.meta.llama3-2-90b-instruct-v1:0, aws_region_name: us-west-2}
  - model_name: local
    litellm_params: {model: meta-llama/Llama-3.1-8B-Instruct, custom_llm_provider: openai, api_base: http://vllm:8000/v1}
router_settings:
  fallbacks: [{"gpt-4o": ["hf-llama", "claude-bedrock"]}, {"hf-llama": ["gpt-4o"]}]
  model_group_alias: {llama: hf-llama, claude: claude-bedrock}
""")
    out = do_import("litellm", source, tmp_path / "out")
    assert list(out.config.models) == ["gpt-4o", "claude-bedrock", "llama-bedrock", "local"]
    bedrock = out.deployments("claude-bedrock")[0]
    assert (bedrock.provider, bedrock.model, bedrock.options["region"]) == ("bedrock", "anthropic.claude-3-sonnet-20240229-v1:0", "us-west-2")
    assert (out.deployments("llama-bedrock")[0].provider, out.deployments("llama-bedrock")[0].model) == ("bedrock", "us.meta.llama3-2-90b-instruct-v1:0")
    local = out.deployments("local")[0]
    assert (local.provider, local.model, local.base_url) == ("openai", "meta-llama/Llama-3.1-8B-Instruct", "http://vllm:8000/v1")
    assert out.policy(fallback).chains == {"gpt-4o": ("claude-bedrock",)}
    assert out.policy(rewrite).aliases == {"claude": "claude-bedrock"}
    skipped = out.output.split("Skipped", 1)[1].split("\n\n", 1)[0]
    for line in ("model_list[1] (hf-llama): ", "huggingface/", "model_list[2] (sm): ", "sagemaker/", "model_list[3]: model_name is missing",
                 "model_list[4] (no-model): litellm_params.model is missing"):
        assert line in skipped, line
        assert line in out.text, line
    assert re.search(r"router_settings\.fallbacks.*hf-llama|hf-llama.*router_settings\.fallbacks", out.output)
    assert re.search(r"model_group_alias.*llama|llama.*model_group_alias", out.output)


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
    """The seed writes its keys in the file: each becomes a variable of its own, one
    deployment per key, and the report names the variables, never the keys."""
    source = tmp_path / "block5.yaml"
    source.write_text(seed_blocks()[5])
    keys = {"LOCKGATE_OPENAI_API_KEY_1": "k-one", "LOCKGATE_OPENAI_API_KEY_2": "k-two", "LOCKGATE_OPENAI_API_KEY_3": "k-three"}
    out = do_import("guide", source, tmp_path / "out", env=keys)
    model = out.config.models["openai"]
    assert model.balance == "round_robin"
    assert [(d.provider, d.api_key) for d in model.deployments] == [("openai", "k-one"), ("openai", "k-two"), ("openai", "k-three")]
    assert "a guess" in out.output
    for n in (1, 2, 3):
        assert f"load_balancing[0].api_keys[{n - 1}]" in out.output and f"LOCKGATE_OPENAI_API_KEY_{n}" in out.output
    assert not re.search(r"\bkey[123]\b", out.output + "".join(p.read_text() for p in out.dir.iterdir()))


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
    assert [(lim.per, lim.rpm, lim.tpm) for lim in out.policy(throttle).limits] == [("user", 30, None), ("model", None, 100000)]
    assert [(b.name, b.period) for b in out.policy(budget).budgets.values()] == [("research", "daily")]
    for note in ("monthly_limit not carried over", "currency EUR", "monitoring"):
        assert note in out.output and note in out.text


def test_guide_bad_inputs(tmp_path):
    for text, message in (("- a\n- b\n", "is a mapping"), ("routing:\n  - {model: gpt-4}\n", "needs task or condition"), ("x: [\n", "guide.yaml:2: ")):
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
            result = subprocess.run([sys.executable, "-m", "lockgate.gateway.cli", *command[1:]], cwd=tmp_path, capture_output=True, text=True,
                                    timeout=60, env={**os.environ, **ENV, "PYTHONPATH": str(ROOT)})
            assert result.returncode == 0, (line, result.stderr)
    assert (tmp_path / "lockgate" / "gateway.yaml").exists() and (tmp_path / "lockgate" / "auth.yaml").exists()


# -- router_settings in every shape LiteLLM's docs write -------------------------------


def test_router_settings_as_litellm_documents_them(tmp_path):
    out = litellm("12-router-settings.yaml", tmp_path)
    assert out.config.models["gpt-4o"].balance == "weighted"
    assert out.policy(rewrite).aliases == {"gpt-4": "gpt-4o", "claude-3-haiku": "claude-3-haiku-20240307"}
    policy = out.policy(fallback)
    assert policy.chains == {"gpt-4o": ("claude-opus",), "gpt-4o-mini": ("gpt-4o",), "*": ("claude-3-haiku-20240307",)}
    assert policy.context_window == {"gpt-4o-mini": "gpt-4o"} and dict(policy.retries) == {"*": 2}
    model = out.config.models["gpt-4o"]
    assert (model.cooldown_failures, model.cooldown_s) == (3, 30) and out.deployments("gpt-4o")[0].timeout_s == 30
    assert out.config.store.url == f"redis://:{ENV['REDIS_PASSWORD']}@redis.internal:6380/0"
    for key in ("retry_policy", "allowed_fails_policy", "enable_pre_call_checks", "stream_timeout", "content_policy_fallbacks", "max_fallbacks",
                "default_max_parallel_requests", "provider_budget_config", "enable_tag_filtering", "routing_strategy_args"):
        assert f"router_settings.{key}" in out.output and f"router_settings.{key}" in out.text, key
    assert "hidden" in out.output


ROUTER_SHAPES = [
    # (router_settings, what the import must carry over)
    ({"fallbacks": {"gpt-4o": ["claude-opus"]}}, {"chains": {"gpt-4o": ["claude-opus"]}}),
    ({"fallbacks": [{"gpt-4o": "claude-opus"}]}, {"chains": {"gpt-4o": ["claude-opus"]}}),
    ({"fallbacks": [{"gpt-4o": [{"model": "claude-opus"}]}]}, {"chains": {"gpt-4o": ["claude-opus"]}}),
    ({"fallbacks": ["claude-opus"]}, {"reported": "router_settings.fallbacks[0]"}),
    ({"fallbacks": [["gpt-4o", "claude-opus"]]}, {"reported": "router_settings.fallbacks[0]"}),
    ({"fallbacks": "claude-opus"}, {"reported": "router_settings.fallbacks"}),
    ({"fallbacks": [{"gpt-4o": [1, None, "claude-opus"]}]}, {"chains": {"gpt-4o": ["claude-opus"]}, "reported": "router_settings.fallbacks[0].gpt-4o[0]"}),
    ({"fallbacks": [None, {"gpt-4o": None}]}, {"reported": "router_settings.fallbacks[0]"}),
    ({"context_window_fallbacks": [{"gpt-4o": "claude-opus"}]}, {"context_window": {"gpt-4o": "claude-opus"}}),
    ({"context_window_fallbacks": {"gpt-4o": ["claude-opus", "gpt-4o-mini"]}}, {"context_window": {"gpt-4o": "claude-opus"}}),
    ({"default_fallbacks": "claude-opus"}, {"chains": {"*": ["claude-opus"]}}),
    ({"default_fallbacks": {"model": "claude-opus"}}, {"chains": {"*": ["claude-opus"]}}),
    ({"model_group_alias": {"gpt-4": {"model": "gpt-4o", "hidden": True}}}, {"aliases": {"gpt-4": "gpt-4o"}}),
    ({"model_group_alias": {"gpt-4": {"hidden": True}}}, {"reported": "router_settings.model_group_alias.gpt-4"}),
    ({"model_group_alias": {"gpt-4": ["gpt-4o"]}}, {"reported": "router_settings.model_group_alias.gpt-4"}),
    ({"model_group_alias": ["gpt-4"]}, {"reported": "router_settings.model_group_alias"}),
    ({"model_group_alias": "gpt-4o"}, {"reported": "router_settings.model_group_alias"}),
    ({"num_retries": "os.environ/NUM_RETRIES"}, {"retries": "${NUM_RETRIES}"}),
    ({"num_retries": "3"}, {"retries": 3}),
    ({"num_retries": "three"}, {"reported": "router_settings.num_retries"}),
    ({"num_retries": 2.5}, {"reported": "router_settings.num_retries"}),
    ({"num_retries": {"gpt-4o": 2}}, {"reported": "router_settings.num_retries"}),
    ({"allowed_fails": "5"}, {"routing": {"cooldown_failures": 5}}),
    ({"allowed_fails": 0}, {"reported": "router_settings.allowed_fails"}),
    ({"cooldown_time": [30]}, {"reported": "router_settings.cooldown_time"}),
    ({"cooldown_time": 0.5}, {"routing": {"cooldown_s": 0.5}}),
    ({"disable_cooldowns": True}, {"routing": {"cooldown_s": 0}}),
    ({"disable_cooldowns": "yes please"}, {"reported": "router_settings.disable_cooldowns"}),
    ({"timeout": "os.environ/LLM_TIMEOUT"}, {"timeout_s": "${LLM_TIMEOUT}"}),
    ({"timeout": {"connect": 5}}, {"reported": "router_settings.timeout"}),
    ({"timeout": True}, {"reported": "router_settings.timeout"}),
    ({"routing_strategy": ["simple-shuffle"]}, {"reported": "router_settings.routing_strategy"}),
    ({"routing_strategy": "cost-based-routing"}, {"reported": "router_settings.routing_strategy"}),
    ({"retry_policy": "lots"}, {"reported": "router_settings.retry_policy"}),
    ({"redis_host": ["a", "b"]}, {"reported": "router_settings.redis_host"}),
    ({"redis_host": "os.environ/REDIS_HOST", "redis_port": "os.environ/REDIS_PORT"}, {"store": "redis://${REDIS_HOST}:${REDIS_PORT}/0"}),
    ({"redis_host": "r", "redis_password": {"from": "vault"}}, {"store": "redis://r:6379/0", "reported": "router_settings.redis_password"}),
    ({"redis_url": 6379}, {"reported": "router_settings.redis_url"}),
    ({"redis_url": "redis://:hunter2@r:6379/1"}, {"store": "${LOCKGATE_REDIS_URL}"}),
]


@pytest.mark.parametrize("router,expected", ROUTER_SHAPES, ids=[repr(r)[:60] for r, _ in ROUTER_SHAPES])
def test_any_router_settings_shape_is_imported_or_reported(router, expected):
    """Each shape a real config may hold is carried over or named in the report: never
    a traceback, never the whole import refused."""
    from lockgate.gateway import importer

    raw = {"model_list": [{"model_name": m, "litellm_params": {"model": f"openai/{m}"}} for m in ("gpt-4o", "gpt-4o-mini", "claude-opus")],
           "router_settings": router}
    result = importer.import_litellm(raw, "config.yaml")
    gateway = yaml.safe_load(result.files["gateway.yaml"])
    fallbacks = yaml.safe_load(result.files.get("fallback.yaml", "{}")) or {}
    rewrites = yaml.safe_load(result.files.get("rewrite.yaml", "{}")) or {}
    got = {
        "chains": fallbacks.get("chains"), "context_window": fallbacks.get("context_window"), "retries": fallbacks.get("retries"),
        "aliases": rewrites.get("aliases"), "routing": gateway.get("routing"), "store": gateway["store"].get("url"),
        "timeout_s": gateway["models"][0]["deployments"][0].get("timeout_s"),
    }
    for key, value in expected.items():
        if key == "reported":
            assert any(note.startswith(value) for note in result.notes), result.notes
        else:
            assert got[key] == value, (key, got)
    for key in set(got) - set(expected):
        assert not got[key] or key == "store" and got[key] is None, (key, got)


def values(strings: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(
        st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats() | strings,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["gpt-4o", "model", "hidden", "ttl", "x"]), inner, max_size=3),
        max_leaves=8,
    )


# model names (fallbacks, aliases) may be named in the report; every other value never is
NAMES = values(st.sampled_from(["gpt-4o", "claude-opus", "os.environ/X", "3", "", "*"]))
OTHERS = values(st.sampled_from(["gpt-4o", "os.environ/X", "3", "1h", "redis", "local", ""]) | st.text(max_size=6).map(lambda t: "SECRET-" + t))
NAME_KEYS = ["fallbacks", "context_window_fallbacks", "content_policy_fallbacks", "default_fallbacks", "model_group_alias"]
OTHER_KEYS = ["routing_strategy", "num_retries", "allowed_fails", "cooldown_time", "disable_cooldowns", "timeout", "request_timeout", "redis_host",
              "redis_port", "redis_password", "redis_url", "retry_policy", "allowed_fails_policy", "routing_strategy_args", "enable_pre_call_checks",
              "cache", "cache_params", "max_budget", "budget_duration", "max_internal_user_budget", "master_key", "max_parallel_requests",
              "global_max_parallel_requests", "database_url", "alerting", "guardrails", "success_callback", "unknown_key"]


@settings(max_examples=300, deadline=None)
@given(section=st.sampled_from(["router_settings", "litellm_settings", "general_settings"]),
       names=st.dictionaries(st.sampled_from(NAME_KEYS), NAMES, max_size=3), others=st.dictionaries(st.sampled_from(OTHER_KEYS), OTHERS, max_size=5),
       params=st.dictionaries(st.sampled_from(["timeout", "rpm", "tpm", "api_key", "api_base", "extra_headers", "aws_region_name", "input_cost_per_token",
                                               "vertex_credentials", "custom_llm_provider", "organization", "weight"]), OTHERS, max_size=3))
def test_no_value_in_any_setting_crashes_the_import_or_shows_in_the_report(section, names, others, params):
    from lockgate.gateway import importer

    raw = {"model_list": [{"model_name": "gpt-4o", "litellm_params": {**params, "model": "openai/gpt-4o"}},
                          {"model_name": "claude-opus", "litellm_params": {"model": "anthropic/claude-3-opus-20240229"}}],
           section: {**names, **others}}
    try:
        result = importer.import_litellm(raw, "config.yaml")
    except importer.ImportRefused as exc:
        raise AssertionError(f"a setting's value refused the whole import: {exc.problems}") from exc
    header = result.files["gateway.yaml"].split("\nstore:", 1)[0]
    for text in (*result.notes, *result.skipped, header):
        assert "SECRET-" not in text, text
    for text in result.files.values():
        yaml.safe_load(text)


# -- hostile input ---------------------------------------------------------------------


def alias_bomb() -> str:
    """About 1 KB of YAML whose aliases expand to 43 million leaves, under a section the
    import reports (so whatever walks or prints that section pays for every leaf)."""
    lines = ["model_list:", "  - model_name: m", "    litellm_params: {model: openai/gpt-4o}", "litellm_settings:",
             '  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 13) + "]" for i in range(1, 7)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_by_the_bounds_of_lockgates_own_config(tmp_path):
    text = alias_bomb()
    assert len(text) < 1200 and 13 ** 7 > 40_000_000
    source = tmp_path / "bomb.yaml"
    source.write_text(text)
    result = cli("import", "litellm", str(source), "-o", str(tmp_path / "out"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "expands to more than 100,000 nodes" in result.stderr and "Nothing was written" in result.stderr
    assert not (tmp_path / "out").exists() and result.stdout == ""


@pytest.mark.parametrize("kind", ["litellm", "guide"])
@pytest.mark.parametrize("content,message", [
    (b"model_list:\n  - model_name: caf\xe9\n", "not UTF-8"),
    (("x: " + "[" * 5000 + "]" * 5000 + "\n").encode(), "nested"),
    (("x: " + "[" * 70 + "]" * 70 + "\n").encode(), "nested deeper than 64 levels"),
    (b"x: \x00\n", "U+0000 is not allowed"),
    (b"? [a, b]\n: c\n", ":1: "),
])
def test_unreadable_input_is_one_clear_line_and_a_non_zero_exit(tmp_path, kind, content, message):
    source = tmp_path / "in.yaml"
    source.write_bytes(content)
    result = cli("import", kind, str(source), "-o", str(tmp_path / "out"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"lockgate import {kind}: {source}:") and message in first, result.stderr
    assert result.stderr.splitlines()[1:] == ["Nothing was written."]
    assert not (tmp_path / "out").exists()


def test_output_that_cannot_be_written_is_one_clear_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for out, message in ((blocker / "out", "Not a directory"), (blocker, "is a file, not a directory")):
        result = cli("import", "litellm", str(LITELLM / "01-quickstart.yaml"), "-o", str(out))
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.splitlines()) == 1 and message in result.stderr and result.stderr.startswith("lockgate import litellm: ")
    assert blocker.read_text() == "not a directory"
    missing = cli("import", "litellm", str(tmp_path / "nope.yaml"), "-o", str(tmp_path / "out"))
    assert missing.returncode == 1 and "cannot read: No such file or directory" in missing.stderr and "Traceback" not in missing.stderr


SECRETS = ("sk-literal-openai-0001", "sk-guardrail-0002", "T000/B000/XXXX", "sk-lf-secret-0003", "tok-unknown-0004", "hunter2-redis-0005",
           "AKIA-LITERAL-0006", "aws-secret-0007", "Bearer-tok-0008", "hunter3-cache-0009", "pk-lf-public-0010", "db-password-0011",
           "sk-vertex-json-0012", "sk-base-0013")


def test_secrets_are_never_printed_or_copied(tmp_path):
    """Literal secrets in sections that do not carry over are named by their path only;
    those in places that do carry over become variables of their own, named in the report."""
    source = tmp_path / "config.yaml"
    source.write_text(f"""
include: [more-models.yaml]
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: {SECRETS[0]}
      extra_headers: {{Authorization: "Bearer {SECRETS[8]}", X-Team: search}}
  - model_name: gpt-4o
    litellm_params: {{model: openai/gpt-4o, api_key: os.environ/OPENAI_API_KEY}}
  - model_name: claude-bedrock
    litellm_params:
      model: bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0
      aws_region_name: us-east-1
      aws_access_key_id: {SECRETS[6]}
      aws_secret_access_key: {SECRETS[7]}
  - model_name: gemini-vertex
    litellm_params:
      model: vertex_ai/gemini-1.5-pro
      vertex_project: p
      vertex_location: us-central1
      vertex_credentials: '{{"type": "service_account", "private_key": "{SECRETS[12]}"}}'
  - model_name: gemini-direct
    litellm_params: {{model: openai/gemini-1.5-pro, api_base: "https://proxy.example/v1?key={SECRETS[13]}"}}
router_settings:
  redis_host: redis.internal
  redis_password: {SECRETS[5]}
litellm_settings:
  cache: true
  cache_params: {{type: redis, host: cache.internal, password: {SECRETS[9]}}}
  guardrails:
    - guardrail_name: lakera
      litellm_params: {{guardrail: lakera_prompt_injection, mode: pre_call, api_key: {SECRETS[1]}}}
  slack_webhook_url: https://hooks.slack.com/services/{SECRETS[2]}
  mystery_setting: {{token: {SECRETS[4]}}}
general_settings:
  master_key: sk-master-0000
  alerting: [slack]
  alerting_config: {{slack_webhook: https://hooks.slack.com/services/{SECRETS[2]}}}
  database_url: postgresql://llm:{SECRETS[11]}@db/litellm
environment_variables:
  LANGFUSE_SECRET_KEY: {SECRETS[3]}
  LANGFUSE_PUBLIC_KEY: {SECRETS[10]}
""")
    variables = {"LOCKGATE_GPT_4O_API_KEY": "sk-a", "LOCKGATE_GPT_4O_AUTHORIZATION": "Bearer b", "LOCKGATE_CLAUDE_BEDROCK_AWS_ACCESS_KEY_ID": "c",
                 "LOCKGATE_CLAUDE_BEDROCK_AWS_SECRET_ACCESS_KEY": "d", "LOCKGATE_REDIS_PASSWORD": "e",
                 "LOCKGATE_GEMINI_DIRECT_API_BASE": "http://127.0.0.1:9/v1"}
    out = do_import("litellm", source, tmp_path / "out", env=variables)
    everything = out.output + "".join(p.read_text() for p in out.dir.iterdir())
    for secret in (*SECRETS, "sk-master-0000"):
        assert secret not in everything, secret
    for path in ("include: more-models.yaml not read", "litellm_settings.guardrails", "litellm_settings.slack_webhook_url", "litellm_settings.mystery_setting",
                 "general_settings.alerting_config", "general_settings.database_url", "environment_variables.LANGFUSE_SECRET_KEY",
                 "litellm_params.vertex_credentials holds the service account's JSON itself"):
        assert path in out.output and path in out.text, path
    first = out.deployments("gpt-4o")[0]
    assert (first.api_key, first.headers["authorization"], first.headers["x-team"]) == ("sk-a", "Bearer b", "search")
    assert out.deployments("gpt-4o")[1].api_key == ENV["OPENAI_API_KEY"], "a key read from the environment stays so"
    bedrock = out.deployments("claude-bedrock")[0]
    assert bedrock.options["credentials"]._fixed_keys == ("c", "d", None)
    assert out.config.store.url == "redis://:e@redis.internal:6379/0", "never REDIS_PASSWORD, which the environment may hold for another Redis"
    assert out.deployments("gemini-direct")[0].base_url == "http://127.0.0.1:9/v1"
    for variable in variables:
        assert f"${{{variable}}}" in out.output, variable
    assert "cache_params.password" in out.output and "LOCKGATE_REDIS_PASSWORD_2" not in (out.dir / "gateway.yaml").read_text().split("\nstore:")[1], \
        "the router's Redis is the store; the cache's own is reported"


# -- the guides' other shapes -----------------------------------------------------------


def test_guide_shapes_of_the_public_onyx_and_litellm_guides(tmp_path):
    """`fallbacks` as `{model, fallback}` entries, `caching` with a key_generation and
    per-model TTLs, global and per-scope `rate_limits` blocks, `load_balancing` with a
    list of api_keys (one deployment each, read from the environment)."""
    source = tmp_path / "guide.yaml"
    source.write_text("""
models:
  - model_name: gpt-4o
    litellm_params: {model: openai/gpt-4o, api_key: os.environ/OPENAI_API_KEY}
  - model_name: claude-3-5-sonnet
    litellm_params: {model: anthropic/claude-3-5-sonnet-20241022, api_key: os.environ/ANTHROPIC_API_KEY}
fallbacks:
  - model: gpt-4o
    fallback: claude-3-5-sonnet
  - model: claude-3-5-sonnet
    fallback: [gpt-4o-mini]
caching:
  enabled: true
  ttl: 1h
  key_generation: "user_id + model + prompt_hash"
  models:
    gpt-4o: 7200
    claude-3-5-sonnet: {ttl: 30m}
rate_limits:
  global:
    requests_per_minute: 1000
    tokens_per_minute: 500000
  per_user:
    requests_per_minute: 60
  per_model:
    gpt-4o: {tokens_per_minute: 200000}
load_balancing:
  - provider: openai
    api_keys: [os.environ/OPENAI_KEY_A, os.environ/OPENAI_KEY_B, {key: os.environ/OPENAI_KEY_C, weight: 2}]
    strategy: least_busy
""")
    out = do_import("guide", source, tmp_path / "out", env={"OPENAI_KEY_A": "a", "OPENAI_KEY_B": "b", "OPENAI_KEY_C": "c"})
    assert out.policy(fallback).chains == {"gpt-4o": ("claude-3-5-sonnet",), "claude-3-5-sonnet": ("gpt-4o-mini",)}
    assert models_of(out)["gpt-4o-mini"] == ("openai", "gpt-4o-mini")
    policy = out.policy(cache)
    assert (policy.ttl_s, policy.scope, policy.trust_client_user) == (3600, "user", True)
    assert (out.dir / "cache.yaml").read_text().count("ttl_by_model") == 1
    assert yaml.safe_load((out.dir / "cache.yaml").read_text())["ttl_by_model"] == {"gpt-4o": 7200, "claude-3-5-sonnet": 1800}
    limits = [(lim.per, lim.rpm, lim.tpm, dict(lim.match)) for lim in out.policy(throttle).limits]
    assert limits == [("global", 1000, 500000, {}), ("user", 60, None, {}), ("model", None, 200000, {"model": "gpt-4o"})]
    pool = out.config.models["gpt-4o"]
    assert [(d.api_key, d.weight) for d in pool.deployments] == [("a", 1), ("b", 1), ("c", 2)] and pool.balance == "least_busy"


def test_a_guide_model_lockgate_cannot_serve_is_skipped_and_leaves_its_chains(tmp_path):
    source = tmp_path / "guide.yaml"
    source.write_text("""
models:
  - model_name: gpt-4o
    litellm_params: {model: openai/gpt-4o, fallbacks: [hf-zephyr, claude-3-haiku]}
  - model_name: hf-zephyr
    litellm_params: {model: huggingface/HuggingFaceH4/zephyr-7b-beta}
fallbacks:
  - {model: hf-zephyr, fallback: gpt-4o}
""")
    out = do_import("guide", source, tmp_path / "out")
    assert set(out.config.models) == {"gpt-4o", "claude-3-haiku"}
    assert out.policy(fallback).chains == {"gpt-4o": ("claude-3-haiku",)}
    assert "models[1] (hf-zephyr): unknown provider prefix 'huggingface/'" in out.output.split("Skipped", 1)[1]
    assert "'hf-zephyr' left out (it was skipped)" in out.output
