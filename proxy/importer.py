"""`lockgate import litellm|guide`: a LiteLLM Proxy config, or the YAML shapes of the
seed document and the Onyx deployment guides, as `gateway.yaml` and policy files.

Both importers fill one `Draft` (models, store, routing, and the six policies) and
note everything they could not carry over or had to guess; the notes are printed and
written at the top of `gateway.yaml`. Nothing in the input is dropped silently, and
a model is never dropped: an input the importer cannot read whole is refused with
every problem listed, and nothing is written. The output depends on the input alone
(no dates, no machine state except a master key's environment variable, which is
hashed), so re-running an import gives the same files.

Choices where LiteLLM and lockgate do not line up:
- Deployments: `os.environ/VAR` becomes `${VAR}`; a provider key left out is read
  from the variable LiteLLM reads (OPENAI_API_KEY...). Per-deployment `rpm`/`tpm`
  become the deployment's weight (as LiteLLM's shuffle weighs by them) and one
  throttle limit per model, their sum, when every deployment of the model has one.
- `routing_strategy`: simple-shuffle -> weighted, least-busy -> least_busy,
  latency-based-routing -> lowest_latency, usage-based-routing -> weighted by tpm/rpm;
  cost-based routing has no equivalent (round_robin, noted).
- `max_budget` is proxy-wide in LiteLLM; lockgate budgets are per key, user or team,
  so it becomes the budget of the only caller the imported config has: the master
  key, or, without one, the anonymous caller.
- `master_key` is stored as its sha256 only; `os.environ/VAR` is hashed from the
  variable as set during the import, or noted when it is not set.
- Guides: a provider named where a model is needed (`primary: openai`) becomes a
  model of that name served by the provider's flagship model (noted as a guess); a
  model name the guide uses without defining it is served by the provider its name
  implies (gpt-* by openai, claude-* by anthropic...), also noted.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ImportRefused(Exception):
    """The input cannot be imported whole: every problem, one a line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Result:
    files: dict[str, str]  # file name -> contents, gateway.yaml first
    notes: list[str]  # what was not carried over, or guessed
    env: list[str]  # environment variables the output reads


POLICY_ORDER = ("auth", "throttle", "budget", "rewrite", "cache", "fallback")

# LiteLLM provider prefix -> lockgate provider
PREFIXES = {
    "openai": "openai", "text-completion-openai": "openai", "litellm_proxy": "openai", "azure_ai": "openai",
    "custom_openai": "openai", "azure": "azure", "anthropic": "anthropic", "gemini": "gemini", "vertex_ai": "vertex",
    "vertex_ai_beta": "vertex", "bedrock": "bedrock", "ollama": "ollama", "ollama_chat": "ollama", "hosted_vllm": "vllm",
    "vllm": "vllm", "cohere": "cohere", "cohere_chat": "cohere", "groq": "groq", "mistral": "mistral",
    "deepseek": "deepseek", "together_ai": "together", "fireworks_ai": "fireworks", "openrouter": "openrouter",
    "xai": "xai", "perplexity": "perplexity", "lm_studio": "lmstudio", "jina_ai": "jina", "voyage": "voyage",
}
# the variable LiteLLM reads a provider's key from when the config names none (so the
# environment LiteLLM ran with serves lockgate unchanged)
KEY_ENV = {
    "openai": "OPENAI_API_KEY", "azure": "AZURE_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "gemini": "GEMINI_API_KEY",
    "cohere": "COHERE_API_KEY", "groq": "GROQ_API_KEY", "mistral": "MISTRAL_API_KEY", "deepseek": "DEEPSEEK_API_KEY",
    "together": "TOGETHERAI_API_KEY", "fireworks": "FIREWORKS_AI_API_KEY", "openrouter": "OPENROUTER_API_KEY",
    "xai": "XAI_API_KEY", "perplexity": "PERPLEXITYAI_API_KEY", "jina": "JINA_AI_API_KEY", "voyage": "VOYAGE_API_KEY",
}
# a provider named where a model is needed: the model that stands for it (a guess, noted)
FLAGSHIPS = {
    "openai": {"provider": "openai", "model": "gpt-4o"},
    "anthropic": {"provider": "anthropic", "model": "claude-3-5-sonnet-20241022"},
    "azure": {"provider": "azure", "model": "gpt-4o", "base_url": "${AZURE_API_BASE}"},
    "gemini": {"provider": "gemini", "model": "gemini-1.5-flash"},
    "google": {"provider": "gemini", "model": "gemini-1.5-flash"},
    "cohere": {"provider": "cohere", "model": "command-r-plus"},
    "mistral": {"provider": "mistral", "model": "mistral-large-latest"},
    "groq": {"provider": "groq", "model": "llama-3.3-70b-versatile"},
    "deepseek": {"provider": "deepseek", "model": "deepseek-chat"},
    "ollama": {"provider": "ollama", "model": "llama3.1:8b"},
}
# model names without a prefix, and the provider their name implies
NAME_PROVIDERS = (
    (re.compile(r"^(gpt-|o[1-9]|chatgpt-|text-embedding-|davinci|babbage|dall-e|whisper|tts-|omni-moderation|text-moderation)"), "openai"),
    (re.compile(r"^rerank-(english|multilingual|v)"), "cohere"),
    (re.compile(r"^claude"), "anthropic"),
    (re.compile(r"^gemini|^text-embedding-00"), "gemini"),
    (re.compile(r"^(command|embed-)"), "cohere"),
    (re.compile(r"^(mistral|mixtral|codestral|open-mistral|ministral|pixtral)"), "mistral"),
    (re.compile(r"^deepseek"), "deepseek"),
    (re.compile(r"^grok"), "xai"),
)
STRATEGIES = {
    "simple-shuffle": "weighted", "least-busy": "least_busy", "latency-based-routing": "lowest_latency",
    "usage-based-routing": "weighted", "usage-based-routing-v2": "weighted",
}
GUIDE_STRATEGIES = {
    "round_robin": "round_robin", "round-robin": "round_robin", "weighted": "weighted", "random": "weighted",
    "least_busy": "least_busy", "least-busy": "least_busy", "least_connections": "least_busy",
    "latency": "lowest_latency", "lowest_latency": "lowest_latency", "latency-based": "lowest_latency", "sticky": "sticky",
}
PERIODS = {"daily_limit": "daily", "weekly_limit": "weekly", "monthly_limit": "monthly", "total_limit": "total", "limit": "monthly"}
ENV_REF = re.compile(r"^os\.environ/([A-Za-z_][A-Za-z0-9_]*)$")


def env_ref(value: Any) -> Any:
    """LiteLLM's `os.environ/VAR` as lockgate's `${VAR}`, inside lists and maps too."""
    if isinstance(value, str):
        match = ENV_REF.match(value.strip())
        return "${" + match.group(1) + "}" if match else value
    if isinstance(value, list):
        return [env_ref(v) for v in value]
    if isinstance(value, dict):
        return {k: env_ref(v) for k, v in value.items()}
    return value


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "x"


def period_of(duration: Any) -> str | None:
    """LiteLLM's budget_duration (30d, 1mo, 7d, 24h...) as a lockgate period."""
    text = str(duration or "").strip().lower()
    match = re.fullmatch(r"(\d+)\s*(s|m|h|d|w|mo|month|months)", text)
    if not match:
        return None
    n, unit = int(match.group(1)), match.group(2)
    seconds = n * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}.get(unit, 2_592_000)
    return {86400: "daily", 604800: "weekly", 2_592_000: "monthly"}.get(seconds)


@dataclass
class Draft:
    """What the import builds, in the order gateway.yaml and the policies are written."""

    source: str
    models: dict[str, dict] = field(default_factory=dict)
    store: dict = field(default_factory=lambda: {"backend": "disk", "path": ".lockgate/state"})
    routing: dict = field(default_factory=dict)
    policies: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def policy(self, name: str) -> dict:
        return self.policies.setdefault(name, {})

    def set_balance(self, name: str, balance: str) -> None:
        model = self.models[name]
        self.models[name] = {"name": name, "balance": balance, **{k: v for k, v in model.items() if k not in ("name", "balance")}}

    def add_deployment(self, name: str, deployment: dict) -> None:
        self.models.setdefault(name, {"name": name, "deployments": []})["deployments"].append(deployment)

    def ensure_model(self, name: str, why: str) -> None:
        """A model named by a rule, alias or chain that nothing defines yet."""
        if name in self.models or name == "*":
            return
        flagship = FLAGSHIPS.get(name.lower())
        if flagship is not None:
            deployment = dict(flagship)
            if deployment["provider"] in KEY_ENV:
                deployment["api_key"] = "${" + KEY_ENV[deployment["provider"]] + "}"
            self.add_deployment(name, deployment)
            self.note(f"{why} names the provider {name!r} where a model is needed: imported as a model {name!r} served by {deployment['model']} (a guess: edit it)")
            return
        provider = next((p for pattern, p in NAME_PROVIDERS if pattern.search(name.lower())), None)
        if provider is None:
            self.add_deployment(name, {"provider": "openai", "model": name, "base_url": "${OPENAI_COMPATIBLE_BASE_URL}"})
            self.note(f"{why} names {name!r}, which no provider's naming matches: served by an OpenAI-compatible server at ${{OPENAI_COMPATIBLE_BASE_URL}} (edit it)")
            return
        deployment = {"provider": provider, "model": name}
        if provider in KEY_ENV:
            deployment["api_key"] = "${" + KEY_ENV[provider] + "}"
        self.add_deployment(name, deployment)
        self.note(f"{why} names {name!r} without defining it: served by {provider} as {name!r} (edit if that is not the upstream id)")

    def chain(self, model: str, targets: list[str]) -> None:
        chains = self.policy("fallback").setdefault("chains", {})
        existing = chains.setdefault(str(model), [])
        for target in targets:
            if str(target) not in existing and str(target) != str(model):
                existing.append(str(target))

    # -- output ---------------------------------------------------------------------
    def render(self, command: str) -> Result:
        files: dict[str, str] = {}
        header = [f"# Imported by `lockgate import {command} {self.source}`; importing it again gives this file again."]
        if self.notes:
            header.append("# Not carried over, or guessed (also printed by the import):")
            header += [f"#   - {line}" for line in self.notes]
        gateway: dict[str, Any] = {"store": self.store}
        if self.routing:
            gateway["routing"] = self.routing
        gateway["models"] = list(self.models.values())
        stack = [{name: f"{name}.yaml"} for name in POLICY_ORDER if name in self.policies]
        if stack:
            gateway["middleware"] = stack
        files["gateway.yaml"] = "\n".join(header) + "\n" + dump(gateway)
        for name in POLICY_ORDER:
            if name in self.policies:
                files[f"{name}.yaml"] = f"# {name} policy imported from {self.source} (see gateway.yaml for what was not carried over).\n" + dump(self.policies[name])
        env = sorted({m for text in files.values() for m in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)})
        return Result(files, list(self.notes), env)


def dump(data: Any) -> str:
    # SafeDumper quotes strings YAML 1.1 would read as booleans (on, yes), so any reader agrees
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=120)


# -- reading ------------------------------------------------------------------------


class DuplicateKeyLoader(yaml.SafeLoader):
    """Guides repeat keys (`fallback: anthropic` then `fallback: azure`): the values of
    a repeated key are kept together as a list instead of the last one winning."""


def _mapping_keeping_duplicates(loader: DuplicateKeyLoader, node: yaml.MappingNode) -> dict:
    loader.flatten_mapping(node)
    result: dict = {}
    seen: set = set()
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        value = loader.construct_object(value_node, deep=True)
        if key in seen:
            previous = result[key]
            result[key] = (previous if isinstance(previous, list) and key in loader.repeated else [previous]) + [value]
            loader.repeated.add(key)
        else:
            result[key] = value
            seen.add(key)
    return result


DuplicateKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_keeping_duplicates)


def read(path: Path, keep_duplicates: bool = False) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ImportRefused([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        if keep_duplicates:
            loader = DuplicateKeyLoader(text)
            loader.repeated = set()
            try:
                return loader.get_single_data()
            finally:
                loader.dispose()
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        raise ImportRefused([f"{path}:{line}: not valid YAML: {exc.problem or exc}"]) from None
    except yaml.YAMLError as exc:
        raise ImportRefused([f"{path}: not valid YAML: {exc}"]) from None


# -- LiteLLM -------------------------------------------------------------------------

LITELLM_TOP = {"model_list", "router_settings", "litellm_settings", "general_settings", "environment_variables", "include"}
PARAM_NOTES = {
    "max_retries": "retries are the fallback policy's (`retries`)",
    "stream_timeout": "lockgate has one timeout_s for the first byte and every silence after it",
    "drop_params": "lockgate drops the fields a translated provider does not take, always",
    "aws_role_name": "assume the role through an AWS profile (`aws_profile`) with role_arn",
}


def provider_and_model(model: str, where: str, draft: Draft) -> tuple[str, str] | None:
    prefix, sep, rest = model.partition("/")
    if sep and prefix in PREFIXES:
        provider = PREFIXES[prefix]
        if provider == "bedrock":
            rest = re.sub(r"^(converse|invoke|converse_like)/", "", rest)
        return provider, rest
    if sep and "/" not in rest and prefix not in ("meta-llama", "accounts"):
        draft.problems.append(f"{where}: unknown provider prefix {prefix + '/'!r} in model {model!r} (lockgate serves: {', '.join(sorted(set(PREFIXES)))})")
        return None
    provider = next((p for pattern, p in NAME_PROVIDERS if pattern.search(model.lower())), None)
    if provider is None:
        draft.problems.append(f"{where}: model {model!r} has no provider prefix lockgate knows; write it as openai/{model} with api_base for an OpenAI-compatible server")
        return None
    draft.note(f"{where}: {model!r} has no provider prefix: served by {provider}, as LiteLLM guesses from the name")
    return provider, model


def litellm_deployment(entry: dict, where: str, draft: Draft, default_timeout: Any) -> dict | None:
    params = entry.get("litellm_params")
    if not isinstance(params, dict) or not isinstance(params.get("model"), str):
        draft.problems.append(f"{where}: litellm_params.model is missing")
        return None
    params = env_ref(params)
    found = provider_and_model(params["model"], where, draft)
    if found is None:
        return None
    provider, model = found
    dep: dict[str, Any] = {"provider": provider, "model": model}
    info = entry.get("model_info") if isinstance(entry.get("model_info"), dict) else {}
    if info.get("id"):
        dep["id"] = str(info["id"])
    base = params.get("api_base") or params.get("base_url")
    if base:
        if provider == "ollama" and not str(base).rstrip("/").endswith("/v1"):
            base = str(base).rstrip("/") + "/v1"  # LiteLLM speaks Ollama's own API; lockgate its OpenAI one
        dep["base_url"] = str(base)
    elif provider == "azure":
        dep["base_url"] = "${AZURE_API_BASE}"
    if params.get("api_key"):
        dep["api_key"] = str(params["api_key"])
        if not str(params["api_key"]).startswith("${"):
            draft.note(f"{where}: api_key is written in the config itself; better an environment variable")
    elif provider in KEY_ENV and not (provider == "openai" and base):
        dep["api_key"] = "${" + KEY_ENV[provider] + "}"
    if params.get("api_version"):
        dep["api_version"] = str(params["api_version"])
    for source, target in (("aws_region_name", "region"), ("aws_access_key_id", "aws_access_key_id"), ("aws_secret_access_key", "aws_secret_access_key"),
                           ("aws_session_token", "aws_session_token"), ("aws_profile_name", "aws_profile"), ("vertex_project", "project"),
                           ("vertex_location", "location"), ("vertex_credentials", "credentials")):
        if params.get(source) and provider in ("bedrock", "vertex"):
            dep[target] = str(params[source])
    if provider == "vertex" and str(params.get("vertex_credentials", "")).startswith("${"):
        draft.note(f"{where}: vertex_credentials comes from {params['vertex_credentials']}: lockgate reads it as the path of the service-account file")
    timeout = params.get("timeout", default_timeout)
    if timeout:
        dep["timeout_s"] = float(timeout)
    weight = params.get("weight") or params.get("rpm") or entry.get("rpm")
    if weight:
        dep["weight"] = weight
    headers = {str(k).lower(): str(v) for k, v in (params.get("extra_headers") or params.get("headers") or {}).items()}
    if params.get("organization"):
        headers["openai-organization"] = str(params["organization"])
    if headers:
        dep["headers"] = headers
    inp = info.get("input_cost_per_token", params.get("input_cost_per_token"))
    out = info.get("output_cost_per_token", params.get("output_cost_per_token"))
    if inp is not None or out is not None:
        dep["price"] = {"input_per_mtok": round(float(inp or 0) * 1_000_000, 6), "output_per_mtok": round(float(out or 0) * 1_000_000, 6)}
    handled = {"model", "api_base", "base_url", "api_key", "api_version", "timeout", "weight", "rpm", "tpm", "extra_headers", "headers", "organization",
               "input_cost_per_token", "output_cost_per_token", "aws_region_name", "aws_access_key_id", "aws_secret_access_key",
               "aws_session_token", "aws_profile_name", "vertex_project", "vertex_location", "vertex_credentials"}
    for key in params:
        if key not in handled:
            why = PARAM_NOTES.get(key, "a request default or provider option lockgate does not set on deployments")
            draft.note(f"{where}: litellm_params.{key} not carried over ({why})")
    return dep


def model_info_for(info: dict, where: str, draft: Draft) -> dict:
    out = {}
    for key in ("max_input_tokens", "max_tokens", "supports_vision", "supports_reasoning", "mode"):
        if key in info:
            out[key] = info[key]
    if "max_output_tokens" in info and "max_tokens" not in out:
        out["max_tokens"] = info["max_output_tokens"]
    for key in info:
        if key not in out and key not in ("id", "max_output_tokens", "input_cost_per_token", "output_cost_per_token"):
            draft.note(f"{where}: model_info.{key} not carried over")
    return out


def import_litellm(raw: Any, source: str) -> Result:
    draft = Draft(source)
    if not isinstance(raw, dict):
        shape = "empty" if raw is None else f"a {type(raw).__name__}"
        raise ImportRefused([f"{source}: a LiteLLM config is a mapping (model_list:, router_settings:, litellm_settings:, general_settings:), not {shape}"])
    router = raw.get("router_settings") or {}
    settings = raw.get("litellm_settings") or {}
    general = raw.get("general_settings") or {}
    for name, node in (("router_settings", router), ("litellm_settings", settings), ("general_settings", general)):
        if not isinstance(node, dict):
            draft.problems.append(f"{source}: {name} must be a mapping")
    if draft.problems:
        raise ImportRefused(draft.problems)
    for key in raw:
        if key not in LITELLM_TOP:
            draft.note(f"{key}: not a LiteLLM config section lockgate knows")
    default_timeout = router.get("timeout") or settings.get("request_timeout")

    entries = raw.get("model_list")
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise ImportRefused([f"{source}: model_list must be a list of models"])
    limits: dict[str, list] = {}
    for index, entry in enumerate(entries):
        where = f"model_list[{index}]"
        if not isinstance(entry, dict):
            draft.problems.append(f"{where}: each model is a mapping with model_name and litellm_params")
            continue
        name = entry.get("model_name")
        if not isinstance(name, str) or not name:
            draft.problems.append(f"{where}: model_name is missing")
            continue
        where = f"{where} ({name})"
        if "*" in name or "*" in str((entry.get("litellm_params") or {}).get("model", "")):
            draft.note(f"{where}: a wildcard route passes any model name through; lockgate serves the models it lists, so add each one you use")
            continue
        dep = litellm_deployment(entry, where, draft, default_timeout)
        if dep is None:
            continue
        draft.add_deployment(name, dep)
        info = model_info_for(entry.get("model_info") or {}, where, draft)
        if info:
            draft.models[name].setdefault("info", {}).update(info)
        params = entry.get("litellm_params") or {}
        limits.setdefault(name, []).append((params.get("rpm", entry.get("rpm")), params.get("tpm", entry.get("tpm"))))
        for key in entry:
            if key not in ("model_name", "litellm_params", "model_info", "rpm", "tpm"):
                draft.note(f"{where}: {key} not carried over")
    if draft.problems:
        raise ImportRefused(draft.problems)

    per_model_limits(draft, limits)
    import_router(draft, router, settings)
    import_settings(draft, settings, general)
    import_general(draft, general, settings)
    for name, value in (raw.get("environment_variables") or {}).items():
        draft.note(f"environment_variables.{name}: set it in lockgate's environment (its value is not copied)")
    return draft.render("litellm")


def per_model_limits(draft: Draft, limits: dict[str, list]) -> None:
    for name, pairs in limits.items():
        limit: dict[str, Any] = {"id": "model-" + slug(name), "per": "model", "match": {"model": name}}
        for position, field_name in ((0, "rpm"), (1, "tpm")):
            values = [p[position] for p in pairs]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                limit[field_name] = int(sum(values))
            elif any(v is not None for v in values):
                draft.note(f"{name}: {field_name} is set on some deployments only; lockgate limits a model as a whole, so none was set")
        if "rpm" in limit or "tpm" in limit:
            draft.policy("throttle").setdefault("limits", []).append(limit)


def import_router(draft: Draft, router: dict, settings: dict) -> None:
    strategy = router.get("routing_strategy")
    if strategy:
        balance = STRATEGIES.get(str(strategy))
        if balance is None:
            draft.note(f"router_settings.routing_strategy {strategy}: no lockgate equivalent; models balance round_robin")
        else:
            if str(strategy).startswith("usage-based"):
                draft.note(f"router_settings.routing_strategy {strategy}: approximated by weights from each deployment's rpm/tpm")
            for name, model in list(draft.models.items()):
                if len(model["deployments"]) > 1 and balance != "round_robin":
                    draft.set_balance(name, balance)
    for key in ("allowed_fails", "cooldown_time"):
        value = router.get(key, settings.get(key))
        if value is not None:
            draft.routing["cooldown_failures" if key == "allowed_fails" else "cooldown_s"] = value
    retries = router.get("num_retries", settings.get("num_retries"))
    if retries:
        draft.policy("fallback")["retries"] = int(retries)
    for source in (router, settings):
        for item in source.get("fallbacks") or []:
            for model, targets in (item or {}).items():
                draft.chain(model, list(targets or []))
        for item in source.get("context_window_fallbacks") or []:
            for model, targets in (item or {}).items():
                targets = list(targets or [])
                if targets:
                    draft.policy("fallback").setdefault("context_window", {})[str(model)] = str(targets[0])
                if len(targets) > 1:
                    draft.note(f"context_window_fallbacks of {model}: lockgate moves to one bigger model; {', '.join(map(str, targets[1:]))} not carried over")
        for item in source.get("content_policy_fallbacks") or []:
            draft.note(f"content_policy_fallbacks {item}: lockgate does not fall back on a content-policy refusal")
    defaults = settings.get("default_fallbacks") or router.get("default_fallbacks")
    if defaults:
        draft.chain("*", list(defaults))
    aliases = router.get("model_group_alias") or {}
    for alias, target in aliases.items():
        if isinstance(target, dict):
            if target.get("hidden"):
                draft.note(f"model_group_alias {alias}: hidden aliases are listed in /v1/models in lockgate")
            target = target.get("model")
        draft.policy("rewrite").setdefault("aliases", {})[str(alias)] = str(target)
    redis = router.get("redis_url") or router.get("redis_host")
    if redis:
        draft.store = {"backend": "redis", "url": redis_url(router.get("redis_url"), router.get("redis_host"), router.get("redis_port"), router.get("redis_password"))}
    handled = {"routing_strategy", "allowed_fails", "cooldown_time", "num_retries", "fallbacks", "context_window_fallbacks", "content_policy_fallbacks",
               "default_fallbacks", "model_group_alias", "redis_url", "redis_host", "redis_port", "redis_password", "timeout"}
    for key in router:
        if key not in handled:
            draft.note(f"router_settings.{key} not carried over")


def redis_url(url: Any, host: Any, port: Any, password: Any) -> str:
    if url:
        return str(env_ref(url))
    auth = f":{env_ref(password)}@" if password else ""
    return f"redis://{auth}{env_ref(host)}:{env_ref(port) or 6379}/0"


def import_settings(draft: Draft, settings: dict, general: dict) -> None:
    if settings.get("cache"):
        params = settings.get("cache_params") or {}
        kind = str(params.get("type") or "local")
        if params.get("mode") == "default_off":
            draft.note("litellm_settings.cache_params.mode default_off: lockgate's cache is on for every request or off; not enabled")
        else:
            cache: dict[str, Any] = {"ttl_s": params.get("ttl") or 3600, "scope": "global", "models": ["*"]}
            draft.policies["cache"] = cache
            if not params.get("ttl"):
                draft.note("litellm_settings.cache: no ttl given; lockgate's default of 3600 s applies")
            if kind == "redis" and draft.store["backend"] != "redis":
                draft.store = {"backend": "redis", "url": redis_url(params.get("url"), params.get("host"), params.get("port"), params.get("password"))}
            elif kind not in ("redis", "local"):
                draft.note(f"litellm_settings.cache_params.type {kind}: lockgate keeps cache entries in its store ({draft.store['backend']}), exact-match only")
            for key in params:
                if key not in ("type", "ttl", "host", "port", "password", "url", "mode"):
                    draft.note(f"litellm_settings.cache_params.{key} not carried over")
    budget = settings.get("max_budget")
    if budget:
        period = period_of(settings.get("budget_duration")) or "total"
        if settings.get("budget_duration") and period_of(settings.get("budget_duration")) is None:
            draft.note(f"litellm_settings.budget_duration {settings['budget_duration']}: not a day, week or month; imported as a total budget")
        who = {"key": "master"} if general.get("master_key") else {"user": "anonymous"}
        draft.policy("budget").setdefault("budgets", []).append({**who, "limit_usd": float(budget), "period": period})
        draft.note("litellm_settings.max_budget is proxy-wide: it is the budget of the " + ("master key" if "key" in who else "anonymous caller")
                   + ", the only caller this config has; keys you add get budgets of their own")
    internal = settings.get("max_internal_user_budget") or settings.get("max_end_user_budget")
    if internal:
        duration = settings.get("internal_user_budget_duration") or settings.get("budget_duration")
        draft.policy("budget")["default"] = {"per": "user", "limit_usd": float(internal), "period": period_of(duration) or "monthly"}
    handled = {"cache", "cache_params", "max_budget", "budget_duration", "max_internal_user_budget", "max_end_user_budget", "internal_user_budget_duration",
               "fallbacks", "default_fallbacks", "context_window_fallbacks", "content_policy_fallbacks", "num_retries", "request_timeout",
               "allowed_fails", "cooldown_time"}
    reasons = {
        "success_callback": "callbacks: lockgate writes an access log line per request and serves /metrics",
        "failure_callback": "callbacks: lockgate writes an access log line per request and serves /metrics",
        "callbacks": "callbacks: lockgate writes an access log line per request and serves /metrics",
        "service_callback": "callbacks: lockgate writes an access log line per request and serves /metrics",
        "guardrails": "guardrails are not part of lockgate",
        "drop_params": "lockgate drops the fields a translated provider does not take, always",
    }
    for key, value in settings.items():
        if key not in handled:
            draft.note(f"litellm_settings.{key}: {value!r} not carried over" + (f" ({reasons[key]})" if key in reasons else ""))


def import_general(draft: Draft, general: dict, settings: dict) -> None:
    master = general.get("master_key")
    if master:
        auth = draft.policy("auth")
        match = ENV_REF.match(str(master).strip())
        if match is None:
            auth["master_key_sha256"] = hashlib.sha256(str(master).encode()).hexdigest()
        elif os.environ.get(match.group(1)):
            auth["master_key_sha256"] = hashlib.sha256(os.environ[match.group(1)].encode()).hexdigest()
            draft.note(f"general_settings.master_key: hashed from {match.group(1)} as set during the import")
        else:
            draft.note(f"general_settings.master_key reads {match.group(1)}, which was not set during the import: every request is refused "
                       "until auth.yaml has a master_key_sha256 (`lockgate keys new --master` prints one)")
        auth["keys"] = []
    concurrent = general.get("global_max_parallel_requests") or general.get("max_parallel_requests") or settings.get("max_parallel_requests")
    if concurrent:
        draft.policy("throttle").setdefault("limits", []).append({"id": "global-parallel", "per": "global", "concurrent": int(concurrent)})
    reasons = {
        "database_url": "virtual keys, teams and spend live in LiteLLM's database; create lockgate keys with `lockgate keys new`",
        "store_model_in_db": "models live in gateway.yaml",
        "alerting": "use /metrics with your alerting",
    }
    for key, value in general.items():
        if key in ("master_key", "global_max_parallel_requests", "max_parallel_requests"):
            continue
        shown = "(set)" if key in ("database_url",) or "key" in key or "password" in key or "secret" in key else repr(value)
        draft.note(f"general_settings.{key}: {shown} not carried over" + (f" ({reasons[key]})" if key in reasons else ""))


# -- guides ------------------------------------------------------------------------

GUIDE_TOP = {"routing_rules", "routing", "models", "model_list", "caching", "budget_limits", "rate_limits", "load_balancing", "fallbacks"}
# names a condition may use without trusting the client: identity, the request's own, the language's words
TRUSTED_NAMES = frozenset(("user", "team", "key", "user_tier", "tier", "model", "hour", "input_length", "stream", "temperature",
                           "and", "or", "not", "in", "true", "false"))


def import_guide(raw: Any, source: str) -> Result:
    draft = Draft(source)
    if not isinstance(raw, dict):
        shape = "empty" if raw is None else f"a {type(raw).__name__}"
        raise ImportRefused([f"{source}: a guide's YAML is a mapping (routing:, models:, caching:, budget_limits:...), not {shape}"])
    for key in raw:
        if key not in GUIDE_TOP:
            draft.note(f"{key}: not a section lockgate knows")
    for key in ("models", "model_list"):
        guide_models(draft, raw.get(key), key)
    for key in ("routing_rules", "routing"):
        guide_rules(draft, raw.get(key), key)
    guide_load_balancing(draft, raw.get("load_balancing"))
    guide_fallbacks(draft, raw.get("fallbacks"))
    guide_caching(draft, raw.get("caching"))
    guide_budgets(draft, raw.get("budget_limits"))
    guide_rate_limits(draft, raw.get("rate_limits"))
    if draft.problems:
        raise ImportRefused(draft.problems)
    for model, targets in (draft.policies.get("fallback") or {}).get("chains", {}).items():
        for name in (model, *targets):
            draft.ensure_model(name, "fallbacks")
    return draft.render("guide")


def as_list(node: Any, where: str, draft: Draft) -> list:
    if node is None:
        return []
    if not isinstance(node, list):
        draft.problems.append(f"{where} must be a list")
        return []
    return node


def guide_models(draft: Draft, node: Any, key: str) -> None:
    for index, entry in enumerate(as_list(node, key, draft)):
        where = f"{key}[{index}]"
        if not isinstance(entry, dict):
            draft.problems.append(f"{where}: each entry is a mapping")
            continue
        if "feature" in entry:
            target = entry.get("model")
            if not isinstance(target, str):
                draft.problems.append(f"{where}: a feature entry needs model")
                continue
            add_rule(draft, {"id": "feature-" + slug(entry["feature"]), "condition": f"feature == '{entry['feature']}'", "model": target})
            draft.ensure_model(target, f"{where} (feature {entry['feature']})")
            continue
        name = entry.get("model_name") or entry.get("name")
        if not isinstance(name, str):
            draft.problems.append(f"{where}: model_name is missing")
            continue
        params = entry.get("litellm_params")
        if isinstance(params, dict):
            dep = litellm_deployment(entry, where, draft, None) if "fallbacks" not in params else litellm_deployment(
                {**entry, "litellm_params": {k: v for k, v in params.items() if k != "fallbacks"}}, where, draft, None)
            fallbacks = params.get("fallbacks")
        else:
            dep, fallbacks = None, entry.get("fallbacks")
            if isinstance(entry.get("model"), str):
                dep = litellm_deployment({"litellm_params": {k: v for k, v in entry.items() if k not in ("name", "model_name", "fallbacks", "provider")}}, where, draft, None)
                if dep is not None and entry.get("provider") in PREFIXES:
                    dep["provider"] = PREFIXES[entry["provider"]]
        if dep is not None:
            draft.add_deployment(name, dep)
        elif not draft.problems:
            draft.ensure_model(name, where)
        if fallbacks:
            draft.chain(name, [str(f) for f in (fallbacks if isinstance(fallbacks, list) else [fallbacks])])


def add_rule(draft: Draft, rule: dict) -> None:
    policy = draft.policy("rewrite")
    rules = policy.setdefault("rules", [])
    if rule.get("id") and any(r.get("id") == rule["id"] for r in rules):
        rule["id"] = f"{rule['id']}-{len(rules) + 1}"
    rules.append(rule)
    if needs_trust(rule.get("condition", "")):
        if not policy.get("trust_client_fields"):
            draft.policies["rewrite"] = {"trust_client_fields": True, **policy}
            draft.note("routing rules read fields the client sends (x-lockgate-<name> headers, e.g. x-lockgate-task-type: simple_qa, "
                       "x-lockgate-feature: search_qa): trust_client_fields is on, so clients can pick them")


def needs_trust(condition: str) -> bool:
    """Whether a condition reads a field only the client can supply (task_type, feature...)."""
    bare = re.sub(r"'[^']*'|\"[^\"]*\"|\b(?:header|metadata)\.[A-Za-z0-9_-]+", "", condition)
    return any(name not in TRUSTED_NAMES for name in re.findall(r"\b[A-Za-z_][A-Za-z0-9_]*\b", bare))


def guide_rules(draft: Draft, node: Any, key: str) -> None:
    for index, entry in enumerate(as_list(node, key, draft)):
        where = f"{key}[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            draft.problems.append(f"{where}: each rule is a mapping with model and task or condition")
            continue
        model = entry["model"]
        if "task" in entry:
            rule = {"id": "task-" + slug(entry["task"]), "condition": f"task_type == '{entry['task']}'", "model": model}
        elif "condition" in entry:
            rule = {"id": f"{key.replace('_', '-')}-{index + 1}", "condition": str(entry["condition"]), "model": model}
        else:
            draft.problems.append(f"{where}: a rule needs task or condition")
            continue
        add_rule(draft, rule)
        draft.ensure_model(model, where)
        for extra in entry:
            if extra not in ("task", "condition", "model"):
                draft.note(f"{where}.{extra} not carried over")


def guide_load_balancing(draft: Draft, node: Any) -> None:
    for index, entry in enumerate(as_list(node, "load_balancing", draft)):
        where = f"load_balancing[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("provider"), str) or not isinstance(entry.get("api_keys"), list):
            draft.problems.append(f"{where}: each entry is a mapping with provider and api_keys")
            continue
        provider = PREFIXES.get(entry["provider"], entry["provider"])
        if provider not in PREFIXES.values():
            draft.problems.append(f"{where}: unknown provider {entry['provider']!r}")
            continue
        strategy = str(entry.get("strategy") or "round_robin")
        balance = GUIDE_STRATEGIES.get(strategy)
        if balance is None:
            draft.note(f"{where}: strategy {strategy!r} has no lockgate equivalent; round_robin")
            balance = "round_robin"
        keys = [str(env_ref(k)) for k in entry["api_keys"]]
        if any(not k.startswith("${") for k in keys):
            draft.note(f"{where}: {sum(not k.startswith('${') for k in keys)} api_keys are written in the file itself; better environment variables")
        targets = [m for m in draft.models.values() if m["deployments"] and m["deployments"][0]["provider"] == provider]
        if not targets:
            draft.ensure_model(entry["provider"], where)
            targets = [draft.models[entry["provider"]]]
        for model in targets:
            template = model["deployments"][0]
            model["deployments"] = [{**template, "api_key": key} for key in keys]
            draft.set_balance(model["name"], balance)


def guide_fallbacks(draft: Draft, node: Any) -> None:
    if isinstance(node, dict):
        node = [node]
    for index, entry in enumerate(as_list(node, "fallbacks", draft)):
        where = f"fallbacks[{index}]"
        if not isinstance(entry, dict):
            draft.problems.append(f"{where}: each entry is a mapping")
            continue
        if "primary" in entry:
            targets = entry.get("fallback", entry.get("fallbacks"))
            targets = targets if isinstance(targets, list) else [targets]
            if not all(isinstance(t, str) for t in targets) or not targets:
                draft.problems.append(f"{where}: fallback names the model (or provider) to move to")
                continue
            draft.chain(str(entry["primary"]), targets)
        else:  # LiteLLM's own shape: {model: [fallbacks]}
            for model, targets in entry.items():
                draft.chain(str(model), [str(t) for t in (targets if isinstance(targets, list) else [targets])])


def guide_caching(draft: Draft, node: Any) -> None:
    if node is None:
        return
    if not isinstance(node, dict):
        draft.problems.append("caching must be a mapping")
        return
    if node.get("enabled") is False:
        draft.note("caching.enabled is false: no cache")
        return
    key = str(node.get("key_generation") or "")
    scope = "user" if "user" in key else "team" if "team" in key else "global"
    cache: dict[str, Any] = {"ttl_s": node.get("ttl") or 3600, "scope": scope, "models": ["*"]}
    if scope != "global":
        cache["trust_client_user"] = True
        draft.note(f"caching.key_generation {key!r}: entries per {scope}, plus the normalized request (the prompt's hash); without auth, "
                   "the user comes from the x-lockgate-user header (trust_client_user)")
    draft.policies["cache"] = cache
    for extra in node:
        if extra not in ("enabled", "ttl", "key_generation"):
            draft.note(f"caching.{extra} not carried over")


def guide_budgets(draft: Draft, node: Any) -> None:
    for index, entry in enumerate(as_list(node, "budget_limits", draft)):
        where = f"budget_limits[{index}]"
        if not isinstance(entry, dict):
            draft.problems.append(f"{where}: each budget is a mapping")
            continue
        who = next(((dim, entry[src]) for src, dim in (("user_id", "user"), ("user", "user"), ("team", "team"), ("key", "key")) if src in entry), None)
        limits = [(k, entry[k]) for k in PERIODS if k in entry]
        if who is None or not limits:
            draft.problems.append(f"{where}: a budget names user_id, team or key, and a daily_limit / monthly_limit")
            continue
        (first, amount), *rest = limits
        policy = draft.policy("budget")
        policy.setdefault("budgets", []).append({who[0]: str(who[1]), "limit_usd": float(amount), "period": PERIODS[first]})
        if who[0] != "key" and not policy.get("trust_client_user"):
            policy["trust_client_user"] = True
            draft.note("budgets name users and teams: without auth the user comes from the x-lockgate-user header (trust_client_user); with auth, from the key")
        for key, _ in rest:
            draft.note(f"{where}: {key} not carried over (lockgate has one budget per {who[0]}; {first} was kept)")
        currency = str(entry.get("currency") or "USD").upper()
        if currency != "USD":
            draft.note(f"{where}: currency {currency}: lockgate budgets are in USD; the amount was kept as it is")
        for extra in entry:
            if extra not in PERIODS and extra not in ("user_id", "user", "team", "key", "currency"):
                draft.note(f"{where}.{extra} not carried over")


def guide_rate_limits(draft: Draft, node: Any) -> None:
    if isinstance(node, dict):
        node = [node]
    names = {"requests_per_minute": "rpm", "rpm": "rpm", "tokens_per_minute": "tpm", "tpm": "tpm",
             "concurrent": "concurrent", "max_parallel_requests": "concurrent", "concurrent_requests": "concurrent"}
    for index, entry in enumerate(as_list(node, "rate_limits", draft)):
        where = f"rate_limits[{index}]"
        if not isinstance(entry, dict):
            draft.problems.append(f"{where}: each limit is a mapping")
            continue
        limit: dict[str, Any] = {"id": f"imported-{index + 1}", "per": "global"}
        for src, dim in (("user_id", "user"), ("user", "user"), ("team", "team"), ("key", "key"), ("model", "model")):
            if src in entry:
                limit["per"] = dim
                limit["match"] = {dim: str(entry[src])}
                break
        for src, target in names.items():
            if src in entry:
                limit[target] = int(entry[src])
        if not any(k in limit for k in ("rpm", "tpm", "concurrent")):
            draft.problems.append(f"{where}: a limit needs requests_per_minute, tokens_per_minute or concurrent")
            continue
        draft.policy("throttle").setdefault("limits", []).append(limit)
        if limit["per"] in ("user", "team"):
            draft.policy("throttle")["trust_client_user"] = True
        for extra in entry:
            if extra not in names and extra not in ("user_id", "user", "team", "key", "model"):
                draft.note(f"{where}.{extra} not carried over")


# -- writing -------------------------------------------------------------------------


def run(kind: str, path: Path) -> Result:
    """The files an import of `path` writes (raises ImportRefused)."""
    raw = read(path, keep_duplicates=kind == "guide")
    importer = import_litellm if kind == "litellm" else import_guide
    return importer(raw, path.name)


def write(result: Result, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in result.files.items():
        target = directory / name
        target.write_text(text)
        written.append(target)
    return written

