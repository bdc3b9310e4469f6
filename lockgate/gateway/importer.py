"""`lockgate import litellm|guide`: a LiteLLM Proxy config, or the YAML shapes of the
seed document and the Onyx deployment guides, as `gateway.yaml` and policy files.

Both importers fill one `Draft` (models, store, routing, and the six policies) and
note everything they could not carry over or had to guess; the notes are printed and
written at the top of `gateway.yaml`. Nothing in the input is dropped silently: a
model the importer cannot serve (a provider lockgate lacks, an entry without a name or
a model) is skipped and listed with why, and the rest is imported; a chain or alias
that named it loses it, also listed. An input that is not a config at all (not
YAML, not a mapping, a section of the wrong shape) is refused with every problem
listed, and nothing is written. The output depends on the input alone (no dates, no
machine state except a master key's environment variable, which is hashed), so
re-running an import gives the same files.

The input is read with the bounds lockgate's own config has (proxy/config.py's
BoundedLoader: 100,000 nodes with aliases expanded, 64 levels), so a few hundred bytes
of aliases cannot cost gigabytes. Secrets are never copied: the report and the header
name a setting by its path, never its value; a credential written in the file itself
(an api_key, a Redis password, a URL with a password in it) becomes a `${VARIABLE}` of
its own, named in the report, for the operator to set.

Choices where LiteLLM and lockgate do not line up:
- Deployments: `os.environ/VAR` becomes `${VAR}`; a provider key left out is read
  from the variable LiteLLM reads (OPENAI_API_KEY...). Per-deployment `rpm`/`tpm`
  become the deployment's weight (as LiteLLM's shuffle weighs by them) and one
  throttle limit per model, their sum, when every deployment of the model has one.
  A bare Bedrock model id (`anthropic.claude-3-sonnet-20240229-v1:0`) is bedrock's, as
  LiteLLM reads it; `custom_llm_provider` names the provider as in LiteLLM.
- `routing_strategy`: simple-shuffle -> weighted, least-busy -> least_busy,
  latency-based-routing -> lowest_latency, usage-based-routing -> weighted by tpm/rpm;
  cost-based routing has no equivalent (round_robin, noted).
- A setting in both `router_settings` and `litellm_settings` is taken from
  `router_settings`, as LiteLLM does. A setting whose value has a shape LiteLLM's docs do
  not give (a number that is not one, a fallback that is not a model name) is reported
  and left out, never guessed.
- `max_budget` is proxy-wide in LiteLLM; lockgate budgets are per key, user or team,
  so it becomes the budget of the only caller the imported config has: the master
  key, or, without one, the anonymous caller.
- `master_key` is stored as its sha256 only; `os.environ/VAR` is hashed from the
  variable as set during the import, or noted when it is not set.
- `include:` is not followed (reported): import each included file on its own.
- Guides: a provider named where a model is needed (`primary: openai`) becomes a
  model of that name served by the provider's flagship model (noted as a guess); a
  model name the guide uses without defining it is served by the provider its name
  implies (gpt-* by openai, claude-* by anthropic...), also noted.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import yaml

from lockgate.kernel.parsing import BoundedLoader, ConfigError, parse_yaml


class ImportRefused(Exception):
    """The input cannot be imported at all, or the output cannot be written: every problem, one a line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Result:
    files: dict[str, str]  # file name -> contents, gateway.yaml first
    notes: list[str]  # what was not carried over, or guessed
    env: list[str]  # environment variables the output reads
    skipped: list[str] = field(default_factory=list)  # what was not imported at all, and why


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
# a Bedrock model id without LiteLLM's `bedrock/`: [region.]vendor.model[:version], which
# LiteLLM sends to Bedrock (its model map holds these ids)
BEDROCK_ID = re.compile(
    r"^(?:(?:us|eu|apac|au|jp|ca|global|us-gov)\.)?(?:anthropic|amazon|meta|mistral|ai21|cohere|deepseek|writer|qwen|openai|twelvelabs|stability|luma)"
    r"\.[a-z0-9][a-z0-9._-]*(?::[0-9a-z:]+)?$"
)
ENV_REF = re.compile(r"^os\.environ/([A-Za-z_][A-Za-z0-9_]*)$")
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")
# header names whose values are credentials
SECRET_HEADER = re.compile(r"authorization|api[-_]?key|token|secret|password|cookie|signature", re.IGNORECASE)
# query parameters that carry a credential in a URL (`?key=` is Gemini's)
SECRET_QUERY = re.compile(r"^(?:key|api[-_]?key|token|access[-_]?token|secret|sig|signature|password|code)$", re.IGNORECASE)
DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|sec|secs|seconds?|m|min|mins|minutes?|h|hr|hrs|hours?|d|days?)$")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


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


def referenced_variables(node: Any) -> set[str]:
    """Every environment variable the input names (`os.environ/VAR`, `${VAR}`): a secret
    moved out of the file gets a variable of its own, never one of these."""
    found: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            match = ENV_REF.match(item.strip())
            found.update([match.group(1)] if match else VARIABLE.findall(item))
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return found


def slug(text: Any) -> str:
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


def url_holds_secret(url: str) -> bool:
    """A URL with a password (`redis://:pw@host`) or a key in its query (`?key=`)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return False
    return bool(password) or any(SECRET_QUERY.match(name) for name, _ in parse_qsl(parts.query))


@dataclass
class Draft:
    """What the import builds, in the order gateway.yaml and the policies are written."""

    source: str
    taken: set[str] = field(default_factory=set)  # variables the output may not give a new meaning
    models: dict[str, dict] = field(default_factory=dict)
    store: dict = field(default_factory=lambda: {"backend": "disk", "path": ".lockgate/state"})
    routing: dict = field(default_factory=dict)
    policies: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unimported: set[str] = field(default_factory=set)  # model names whose every entry was skipped
    problems: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def skip(self, text: str, name: Any = None) -> None:
        self.skipped.append(text)
        if isinstance(name, str):
            self.unimported.add(name)

    def policy(self, name: str) -> dict:
        return self.policies.setdefault(name, {})

    def set_balance(self, name: str, balance: str) -> None:
        model = self.models[name]
        self.models[name] = {"name": name, "balance": balance, **{k: v for k, v in model.items() if k not in ("name", "balance")}}

    def add_deployment(self, name: str, deployment: dict) -> None:
        self.models.setdefault(name, {"name": name, "deployments": []})["deployments"].append(deployment)
        self.unimported.discard(name)

    # -- values ------------------------------------------------------------------------
    def variable(self, hint: str) -> str:
        """A new environment variable's name from `hint`, one no other setting reads. The
        prefix keeps it apart from what the environment may already hold for another use
        (a REDIS_PASSWORD of some other Redis), which would be taken silently."""
        base = "LOCKGATE_" + (re.sub(r"[^A-Z0-9]+", "_", hint.upper()).strip("_") or "SECRET")
        name, n = base, 1
        while name in self.taken:
            n += 1
            name = f"{base}_{n}"
        self.taken.add(name)
        return name

    def secret(self, value: Any, where: str, hint: str) -> str | None:
        """A credential for the output: `os.environ/VAR` as `${VAR}`; one written in the
        file itself as a variable of its own, named in the report, its value copied nowhere."""
        if value is None or value == "":
            return None
        if isinstance(value, (dict, list)):
            self.note(f"{where}: not a single value; not carried over")
            return None
        text = env_ref(value) if isinstance(value, str) else value
        if isinstance(text, str) and "${" in text:
            return text
        name = self.variable(hint)
        self.note(f"{where} is written in the file itself: the output reads it from ${{{name}}} (set {name} to it; its value is not copied)")
        return "${" + name + "}"

    def number(self, value: Any, where: str, *, integer: bool = False, minimum: float = 0) -> Any:
        """A number for the output: as written, or `${VAR}` for `os.environ/VAR` (lockgate
        reads numbers from the environment too). Anything else is reported, never guessed."""
        if value is None:
            return None
        if isinstance(value, str):
            if ENV_REF.match(value.strip()):
                return env_ref(value)
            if VARIABLE.fullmatch(value.strip()):
                return value.strip()
            with contextlib.suppress(ValueError):
                value = float(value.strip())
        whole = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (not integer or value == int(value))
        if not whole or value < minimum:
            self.note(f"{where}: not {'a whole number' if integer else 'a number'} of at least {minimum:g}; not carried over")
            return None
        return int(value) if integer or value == int(value) else value

    def duration(self, value: Any, where: str) -> Any:
        """Seconds, from a number or a duration such as `1h` or `30m`."""
        if isinstance(value, str):
            match = DURATION.match(value.strip().lower())
            if match:
                return int(float(match.group(1)) * DURATION_UNITS[match.group(2)[0]])
        return self.number(value, where)

    def model_names(self, value: Any, where: str) -> list[str]:
        """Model names as LiteLLM's fallbacks write them: one name, a list of names, or
        `{model: name}` entries."""
        if value is None:
            return []
        items = value if isinstance(value, list) else [value]
        names = []
        for index, item in enumerate(items):
            if isinstance(item, dict):
                item = item.get("model")
            if isinstance(item, str) and item:
                names.append(item)
            else:
                self.note(f"{where}" + (f"[{index}]" if isinstance(value, list) else "") + ": not a model name; not carried over")
        return names

    def served(self, names: list[str], where: str) -> list[str]:
        """The names of `names` this import serves; each other one is noted as left out."""
        kept = []
        for name in names:
            if name in self.models or name == "*":
                kept.append(name)
            else:
                why = "it was skipped" if name in self.unimported else "no model of that name is in model_list"
                self.note(f"{where}: {name!r} left out ({why})")
        return kept

    # -- guides ------------------------------------------------------------------------
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
            self.note(f"{why} names the provider {name!r} where a model is needed: "
                      f"imported as a model {name!r} served by {deployment['model']} (a guess: edit it)")
            return
        provider = next((p for pattern, p in NAME_PROVIDERS if pattern.search(name.lower())), None)
        if provider is None:
            self.add_deployment(name, {"provider": "openai", "model": name, "base_url": "${OPENAI_COMPATIBLE_BASE_URL}"})
            self.note(f"{why} names {name!r}, which no provider's naming matches: "
                      "served by an OpenAI-compatible server at ${OPENAI_COMPATIBLE_BASE_URL} (edit it)")
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
        if not existing:
            del chains[str(model)]

    # -- output ---------------------------------------------------------------------
    def render(self, command: str) -> Result:
        files: dict[str, str] = {}
        header = [f"# Imported by `lockgate import {command} {self.source}`; importing it again gives this file again."]
        if self.skipped:
            header.append("# Skipped, not imported:")
            header += [f"#   - {line}" for line in self.skipped]
        if self.notes:
            header.append("# Not carried over, or guessed (also printed by the import):")
            header += [f"#   - {line}" for line in self.notes]
        gateway: dict[str, Any] = {"store": self.store}
        if self.routing:
            gateway["routing"] = self.routing
        gateway["models"] = list(self.models.values())
        policies = {name: body for name, body in self.policies.items() if body}
        stack = [{name: f"{name}.yaml"} for name in POLICY_ORDER if name in policies]
        if stack:
            gateway["middleware"] = stack
        files["gateway.yaml"] = "\n".join(header) + "\n" + dump(gateway)
        for name in POLICY_ORDER:
            if name in policies:
                heading = f"# {name} policy imported from {self.source} (see gateway.yaml for what was not carried over).\n"
                files[f"{name}.yaml"] = heading + dump(policies[name])
        env = sorted({m for text in files.values() for m in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)})
        return Result(files, list(self.notes), env, list(self.skipped))


def dump(data: Any) -> str:
    # SafeDumper quotes strings YAML 1.1 would read as booleans (on, yes), so any reader agrees
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=120)


# -- reading ------------------------------------------------------------------------


class ImportLoader(BoundedLoader):
    """YAML as LiteLLM reads it (PyYAML's safe_load: YAML 1.1 booleans), within the
    bounds lockgate's own config has."""


class GuideLoader(ImportLoader):
    """Guides repeat keys (`fallback: anthropic` then `fallback: azure`): the values of
    a repeated key are kept together as a list instead of the last one winning."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.repeated: set = set()


def _mapping_keeping_duplicates(loader: GuideLoader, node: yaml.MappingNode) -> dict:
    loader.flatten_mapping(node)
    result: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, Hashable):
            raise yaml.constructor.ConstructorError(problem="a mapping key must be a plain value, not a mapping or a list", problem_mark=key_node.start_mark)
        value = loader.construct_object(value_node, deep=True)
        if key in result:
            previous = result[key]
            result[key] = (previous if isinstance(previous, list) and key in loader.repeated else [previous]) + [value]
            loader.repeated.add(key)
        else:
            result[key] = value
    return result


GuideLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_keeping_duplicates)


def read(path: Path, keep_duplicates: bool = False) -> Any:
    """The document in `path`, parsed by the parser lockgate's own config goes through
    (UTF-8 only, bounded size and depth, `file:line: message` for every refusal)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImportRefused([f"{path}: cannot read: {exc.strerror}"]) from None
    if not data.strip():
        raise ImportRefused([f"{path}: the file is empty"])
    try:
        return parse_yaml(data, str(path), GuideLoader if keep_duplicates else ImportLoader)
    except ConfigError as exc:
        raise ImportRefused(exc.problems) from None


# -- LiteLLM -------------------------------------------------------------------------

LITELLM_SECTIONS = ("router_settings", "litellm_settings", "general_settings")
LITELLM_TOP = {"model_list", *LITELLM_SECTIONS, "environment_variables", "include"}
PARAM_NOTES = {
    "max_retries": "retries are the fallback policy's (`retries`)",
    "stream_timeout": "lockgate has one timeout_s for the first byte and every silence after it",
    "drop_params": "lockgate drops the fields a translated provider does not take, always",
    "aws_role_name": "assume the role through an AWS profile (`aws_profile`) with role_arn",
}
# litellm_params a deployment carries over as they are: LiteLLM name -> lockgate name
CLOUD_SETTINGS = {"aws_region_name": "region", "aws_profile_name": "aws_profile", "vertex_project": "project", "vertex_location": "location"}
CLOUD_SECRETS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
PARAMS_HANDLED = {"model", "custom_llm_provider", "api_base", "base_url", "api_key", "api_version", "timeout", "weight", "rpm", "tpm", "extra_headers",
                  "headers", "organization", "input_cost_per_token", "output_cost_per_token", "vertex_credentials", *CLOUD_SETTINGS, *CLOUD_SECRETS}


def provider_and_model(model: str, custom: Any, where: str, draft: Draft) -> tuple[str, str] | str:
    """The lockgate provider and upstream model id of a LiteLLM `model` (and
    `custom_llm_provider`), or why there is none."""
    if custom is not None:
        if not isinstance(custom, str) or custom not in PREFIXES:
            return "custom_llm_provider names no provider lockgate serves"
        if not model.startswith(custom + "/"):
            model = f"{custom}/{model}"
    prefix, sep, rest = model.partition("/")
    if sep and prefix in PREFIXES:
        provider = PREFIXES[prefix]
        if provider == "bedrock":
            rest = re.sub(r"^(converse|invoke|converse_like)/", "", rest)
        return provider, rest
    if BEDROCK_ID.match(model):
        draft.note(f"{where}: {model!r} is a Bedrock model id: served by bedrock, as LiteLLM reads it")
        return "bedrock", model
    if not sep:
        guessed = next((p for pattern, p in NAME_PROVIDERS if pattern.search(model.lower())), None)
        if guessed is None:
            return f"model {model!r} names no provider: write it as openai/{model} with api_base for an OpenAI-compatible server"
        draft.note(f"{where}: {model!r} has no provider prefix: served by {guessed}, as LiteLLM guesses from the name")
        return guessed, model
    return (f"unknown provider prefix {prefix + '/'!r}: lockgate has no such provider (it serves {', '.join(sorted(set(PREFIXES.values())))}); "
            "an OpenAI-compatible server can be written as openai/MODEL with api_base")


def litellm_deployment(entry: dict, where: str, draft: Draft, default_timeout: Any) -> dict | None:
    """One model_list entry as a lockgate deployment; None (and the entry skipped, with
    why) when lockgate cannot serve it."""
    name = entry.get("model_name")
    raw_params = entry.get("litellm_params")
    if not isinstance(raw_params, dict) or not isinstance(raw_params.get("model"), str) or not raw_params["model"]:
        draft.skip(f"{where}: litellm_params.model is missing", name)
        return None
    params = env_ref(raw_params)
    found = provider_and_model(params["model"], params.get("custom_llm_provider"), where, draft)
    if isinstance(found, str):
        draft.skip(f"{where}: {found}", name)
        return None
    provider, model = found
    at = f"{where}: litellm_params."
    dep: dict[str, Any] = {"provider": provider, "model": model}
    info = entry["model_info"] if isinstance(entry.get("model_info"), dict) else {}
    if info.get("id") is not None:
        dep["id"] = str(info["id"])
    base = params.get("api_base") or params.get("base_url")
    if isinstance(base, str) and base:
        if provider == "ollama" and not base.rstrip("/").endswith("/v1"):
            base = base.rstrip("/") + "/v1"  # LiteLLM speaks Ollama's own API; lockgate its OpenAI one
        dep["base_url"] = draft.secret(base, at + "api_base", f"{name}_API_BASE") if url_holds_secret(base) else base
    elif base:
        draft.note(at + "api_base: not a URL; not carried over")
    elif provider == "azure":
        dep["base_url"] = "${AZURE_API_BASE}"
    key = draft.secret(params.get("api_key"), at + "api_key", f"{name}_API_KEY")
    if key is not None:
        dep["api_key"] = key
    elif provider in KEY_ENV and not (provider == "openai" and base):
        dep["api_key"] = "${" + KEY_ENV[provider] + "}"
    if params.get("api_version") is not None:
        dep["api_version"] = str(params["api_version"])
    cloud_settings(draft, dep, provider, params, at, name)
    timeout = draft.number(params["timeout"], at + "timeout") if "timeout" in params else default_timeout
    if timeout:
        dep["timeout_s"] = timeout
    weight = draft.number(next((v for v in (params.get("weight"), params.get("rpm"), entry.get("rpm")) if v is not None), None), at + "weight")
    if weight:
        dep["weight"] = weight
    headers = deployment_headers(draft, params, at, name)
    if headers:
        dep["headers"] = headers
    price = {k: draft.number(info.get(f"{k}_cost_per_token", params.get(f"{k}_cost_per_token")), f"{where}: {k}_cost_per_token") for k in ("input", "output")}
    if any(v is not None for v in price.values()):
        if all(isinstance(v, (int, float)) for v in price.values() if v is not None):
            dep["price"] = {f"{k}_per_mtok": round(float(v or 0) * 1_000_000, 6) for k, v in price.items()}
        else:
            draft.note(f"{where}: a price read from the environment: lockgate prices per million tokens; not carried over")
    for param in params:
        if param not in PARAMS_HANDLED:
            why = PARAM_NOTES.get(str(param), "a request default or provider option lockgate does not set on deployments")
            draft.note(f"{at}{param} not carried over ({why})")
    return dep


def cloud_settings(draft: Draft, dep: dict, provider: str, params: dict, at: str, name: Any) -> None:
    """Bedrock's region and AWS credentials, Vertex's project, location and service account."""
    if provider not in ("bedrock", "vertex"):
        return
    for source, target in CLOUD_SETTINGS.items():
        if isinstance(params.get(source), (str, int, float)):
            dep[target] = str(params[source])
        elif params.get(source) is not None:
            draft.note(f"{at}{source}: not a single value; not carried over")
    for source in CLOUD_SECRETS:
        value = draft.secret(params.get(source), at + source, f"{name}_{source}")
        if value is not None:
            dep[source] = value
    if provider == "bedrock" and "region" not in dep:
        draft.note(f"{at}aws_region_name is not set: lockgate reads AWS_REGION or AWS_DEFAULT_REGION (LiteLLM read AWS_REGION_NAME)")
    credentials = params.get("vertex_credentials")
    if provider != "vertex" or credentials is None:
        return
    if isinstance(credentials, str) and credentials.startswith("${"):
        dep["credentials"] = credentials
        draft.note(f"{at}vertex_credentials comes from {credentials}: lockgate reads it as the path of the service-account file")
    elif isinstance(credentials, str) and not credentials.lstrip().startswith("{"):
        dep["credentials"] = credentials
    else:
        draft.note(f"{at}vertex_credentials holds the service account's JSON itself: save it as a file and set the deployment's "
                   "`credentials:` to its path; not carried over (Application Default Credentials apply until then)")


def deployment_headers(draft: Draft, params: dict, at: str, name: Any) -> dict[str, str]:
    source = "extra_headers" if "extra_headers" in params else "headers"
    node = params.get(source)
    headers: dict[str, str] = {}
    if isinstance(node, dict):
        for header, value in node.items():
            header = str(header).lower()
            if SECRET_HEADER.search(header):
                value = draft.secret(value, f"{at}{source}.{header}", f"{name}_{header}")
            if value is not None and not isinstance(value, (dict, list)):
                headers[header] = str(value)
    elif node is not None:
        draft.note(f"{at}{source}: not a mapping of header names to values; not carried over")
    if params.get("organization") is not None:
        headers["openai-organization"] = str(params["organization"])
    return headers


def model_info_for(node: Any, where: str, draft: Draft) -> dict:
    if node is None:
        return {}
    if not isinstance(node, dict):
        draft.note(f"{where}: model_info is not a mapping; not carried over")
        return {}
    out = {key: node[key] for key in ("max_input_tokens", "max_tokens", "supports_vision", "supports_reasoning", "mode") if key in node}
    if "max_output_tokens" in node and "max_tokens" not in out:
        out["max_tokens"] = node["max_output_tokens"]
    for key in node:
        if key not in out and key not in ("id", "max_output_tokens", "input_cost_per_token", "output_cost_per_token"):
            draft.note(f"{where}: model_info.{key} not carried over")
    return out


def import_litellm(raw: Any, source: str) -> Result:
    draft = Draft(source, taken=referenced_variables(raw) | set(KEY_ENV.values()))
    if not isinstance(raw, dict):
        shape = "empty" if raw is None else f"a {type(raw).__name__}"
        raise ImportRefused([f"{source}: a LiteLLM config is a mapping (model_list:, router_settings:, litellm_settings:, general_settings:), not {shape}"])
    router, settings, general = (raw.get(name) or {} for name in LITELLM_SECTIONS)
    for name, node in zip(LITELLM_SECTIONS, (router, settings, general), strict=True):
        if not isinstance(node, dict):
            draft.problems.append(f"{source}: {name} must be a mapping")
    entries = raw.get("model_list") or []
    if not isinstance(entries, list):
        draft.problems.append(f"{source}: model_list must be a list of models")
    if draft.problems:
        raise ImportRefused(draft.problems)
    for key in raw:
        if key not in LITELLM_TOP:
            draft.note(f"{key}: not a LiteLLM config section lockgate knows; not carried over")
    report_include(draft, raw.get("include"))
    found = setting(router, settings, "timeout") or setting(router, settings, "request_timeout")
    default_timeout = draft.number(*found) if found else None
    import_models(draft, entries, default_timeout)
    import_router(draft, router, settings)
    import_settings(draft, settings, general)
    import_general(draft, general, settings)
    import_environment(draft, raw.get("environment_variables"))
    return draft.render("litellm")


def report_include(draft: Draft, node: Any) -> None:
    if node is None:
        return
    files = [f for f in (node if isinstance(node, list) else [node]) if isinstance(f, str)]
    draft.note("include: " + (", ".join(files) + " not read" if files else "not read")
               + ": LiteLLM adds each included file's model_list to this config; import each one on its own and add its models to gateway.yaml")


def import_models(draft: Draft, entries: list, default_timeout: Any) -> None:
    limits: dict[str, list] = {}
    for index, entry in enumerate(entries):
        where = f"model_list[{index}]"
        if not isinstance(entry, dict):
            draft.skip(f"{where}: not a mapping with model_name and litellm_params")
            continue
        name = entry.get("model_name")
        if not isinstance(name, str) or not name:
            draft.skip(f"{where}: model_name is missing")
            continue
        where = f"{where} ({name})"
        params = entry["litellm_params"] if isinstance(entry.get("litellm_params"), dict) else {}
        if "*" in name or "*" in str(params.get("model", "")):
            draft.skip(f"{where}: a wildcard route passes any model name through; lockgate serves the models it lists, so add each one you use", name)
            continue
        dep = litellm_deployment(entry, where, draft, default_timeout)
        if dep is None:
            continue
        draft.add_deployment(name, dep)
        info = model_info_for(entry.get("model_info"), where, draft)
        if info:
            draft.models[name].setdefault("info", {}).update(info)
        rates = [draft.number(params.get(k, entry.get(k)), f"{where}: {k}", integer=True, minimum=1) for k in ("rpm", "tpm")]
        limits.setdefault(name, []).append(rates)
        for key in entry:
            if key not in ("model_name", "litellm_params", "model_info", "rpm", "tpm"):
                draft.note(f"{where}: {key} not carried over")
    per_model_limits(draft, limits)


def per_model_limits(draft: Draft, limits: dict[str, list]) -> None:
    for name, pairs in limits.items():
        limit: dict[str, Any] = {"id": "model-" + slug(name), "per": "model", "match": {"model": name}}
        for position, field_name in ((0, "rpm"), (1, "tpm")):
            values = [p[position] for p in pairs]
            if all(isinstance(v, int) for v in values):
                limit[field_name] = sum(values)
            elif any(v is not None for v in values):
                draft.note(f"{name}: {field_name} is not a number on every deployment; lockgate limits a model as a whole, so none was set")
        if "rpm" in limit or "tpm" in limit:
            draft.policy("throttle").setdefault("limits", []).append(limit)


def first(node: dict, keys: tuple[str, ...], section: str) -> tuple[Any, str] | None:
    """The first of `keys` set in `node`, and its path."""
    return next(((node[k], f"{section}.{k}") for k in keys if node.get(k) is not None), None)


def setting(router: dict, settings: dict, key: str) -> tuple[Any, str] | None:
    """A setting LiteLLM reads from either section, and its path: router_settings wins."""
    if key in router:
        return router[key], f"router_settings.{key}"
    if key in settings:
        return settings[key], f"litellm_settings.{key}"
    return None


# router settings litellm_settings may hold too (router_settings wins)
ROUTER_IN_SETTINGS = ("allowed_fails", "cooldown_time", "disable_cooldowns", "num_retries", "request_timeout", "fallbacks", "context_window_fallbacks",
                      "content_policy_fallbacks", "default_fallbacks")
ROUTER_HANDLED = {"routing_strategy", "timeout", "model_group_alias", "redis_url", "redis_host", "redis_port", "redis_password", *ROUTER_IN_SETTINGS}
ROUTER_REASONS = {
    "retry_policy": "lockgate retries every failure fallback.yaml's `on` lists alike: `retries`",
    "model_group_retry_policy": "lockgate retries every failure alike: `retries: {model: n}` in fallback.yaml",
    "allowed_fails_policy": "lockgate cools a deployment down after `cooldown_failures` failures of any kind",
    "enable_pre_call_checks": "lockgate does not measure a prompt against the context window first: fallback.yaml's context_window moves one that is too long",
    "stream_timeout": "lockgate has one timeout_s for the first byte and every silence after it",
    "routing_strategy_args": "the balance strategies take no arguments",
    "provider_budget_config": "budgets are per key, user or team (budget.yaml)",
    "default_max_parallel_requests": "a throttle limit with `concurrent` does this",
    "max_fallbacks": "a chain is as long as fallback.yaml lists",
    "enable_tag_filtering": "route by tag with rewrite.yaml's rules",
}


def import_router(draft: Draft, router: dict, settings: dict) -> None:
    import_strategy(draft, router)
    for key, target, integer, minimum in (("allowed_fails", "cooldown_failures", True, 1), ("cooldown_time", "cooldown_s", False, 0)):
        found = setting(router, settings, key)
        value = draft.number(*found, integer=integer, minimum=minimum) if found else None
        if value is not None:
            draft.routing[target] = value
    found = setting(router, settings, "disable_cooldowns")
    if found and found[0] is True:
        draft.routing["cooldown_s"] = 0
    elif found and found[0] not in (None, False):
        draft.note(f"{found[1]}: not true or false; not carried over")
    found = setting(router, settings, "num_retries")
    retries = draft.number(*found, integer=True) if found else None
    if retries:
        draft.policy("fallback")["retries"] = retries
    import_fallbacks(draft, router, settings)
    found = setting(router, settings, "default_fallbacks")
    if found:
        draft.chain("*", draft.served(draft.model_names(*found), found[1]))
    import_aliases(draft, router.get("model_group_alias"), "router_settings.model_group_alias")
    url = redis_url(draft, {k: (router.get(f"redis_{k}"), f"router_settings.redis_{k}") for k in ("url", "host", "port", "password")})
    if url:
        draft.store = {"backend": "redis", "url": url}
    for key in ROUTER_IN_SETTINGS:
        if key in router and key in settings:
            draft.note(f"litellm_settings.{key}: router_settings.{key} takes its place, as in LiteLLM")
    for key in router:
        if key not in ROUTER_HANDLED:
            draft.note(f"router_settings.{key} not carried over" + (f" ({ROUTER_REASONS[key]})" if key in ROUTER_REASONS else ""))


def import_strategy(draft: Draft, router: dict) -> None:
    strategy = router.get("routing_strategy")
    if strategy is None:
        return
    balance = STRATEGIES.get(strategy) if isinstance(strategy, str) else None
    if balance is None:
        draft.note("router_settings.routing_strategy: no lockgate equivalent; models balance round_robin")
        return
    if strategy.startswith("usage-based"):
        draft.note(f"router_settings.routing_strategy {strategy}: approximated by weights from each deployment's rpm/tpm")
    for name, model in list(draft.models.items()):
        if len(model["deployments"]) > 1:
            draft.set_balance(name, balance)


def fallback_pairs(draft: Draft, node: Any, where: str) -> list[tuple[str, list[str]]]:
    """LiteLLM's fallbacks, `[{model: [fallbacks]}]`, as (model, fallbacks) pairs; a
    single `{model: [...]}` mapping and a single name for the list are taken too."""
    if node is None:
        return []
    items = [node] if isinstance(node, dict) else node
    if not isinstance(items, list):
        draft.note(f"{where}: not a list of {{model: [fallbacks]}}; not carried over")
        return []
    pairs = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            draft.note(f"{where}[{index}]: not a mapping {{model: [fallbacks]}}; not carried over")
            continue
        for model, targets in item.items():
            at = f"{where}[{index}].{model}"
            if not draft.served([str(model)], at):
                continue
            names = draft.served(draft.model_names(targets, at), at)
            if names:
                pairs.append((str(model), names))
    return pairs


def import_fallbacks(draft: Draft, router: dict, settings: dict) -> None:
    found = setting(router, settings, "fallbacks")
    for model, targets in fallback_pairs(draft, *found) if found else []:
        draft.chain(model, targets)
    found = setting(router, settings, "context_window_fallbacks")
    if found:
        for model, targets in fallback_pairs(draft, *found):
            draft.policy("fallback").setdefault("context_window", {})[model] = targets[0]
            if len(targets) > 1:
                draft.note(f"{found[1]} of {model}: lockgate moves to one bigger model; {', '.join(targets[1:])} not carried over")
    found = setting(router, settings, "content_policy_fallbacks")
    if found and found[0]:
        draft.note(f"{found[1]} not carried over (lockgate does not fall back on a content-policy refusal)")


def import_aliases(draft: Draft, node: Any, where: str) -> None:
    """model_group_alias: a name for a model group, or `{model: group, hidden: true}`."""
    if node is None:
        return
    if not isinstance(node, dict):
        draft.note(f"{where}: not a mapping of alias to model group; not carried over")
        return
    for alias, target in node.items():
        at = f"{where}.{alias}"
        if isinstance(target, dict):
            if target.get("hidden"):
                draft.note(f"{at}: hidden aliases are listed in /v1/models in lockgate")
            target = target.get("model")
        if not isinstance(target, str) or not target:
            draft.note(f"{at}: names no model group; not carried over")
            continue
        if draft.served([target], at):
            draft.policy("rewrite").setdefault("aliases", {})[str(alias)] = target


def redis_url(draft: Draft, parts: dict[str, tuple[Any, str]]) -> str | None:
    """A Redis URL from LiteLLM's url, or host, port and password (each with its path);
    a password written in the file becomes a variable."""
    (url, url_at), (host, host_at), (port, port_at), (password, password_at) = (parts[k] for k in ("url", "host", "port", "password"))
    if url is not None:
        if not isinstance(url, str) or not url:
            draft.note(f"{url_at}: not a URL; not carried over")
            return None
        url = env_ref(url)
        return draft.secret(url, url_at, "REDIS_URL") if url_holds_secret(url) else url
    if host is None:
        return None
    if not isinstance(host, str) or not host:
        draft.note(f"{host_at}: not a host name; not carried over")
        return None
    number = draft.number(port, port_at, integer=True, minimum=1) if port is not None else None
    secret = draft.secret(password, password_at, "REDIS_PASSWORD")
    auth = f":{secret}@" if secret else ""
    return f"redis://{auth}{env_ref(host)}:{number or 6379}/0"


SETTINGS_REASONS = {
    "success_callback": "callbacks: lockgate writes an access log line per request and serves /metrics",
    "failure_callback": "callbacks: lockgate writes an access log line per request and serves /metrics",
    "callbacks": "callbacks: lockgate writes an access log line per request and serves /metrics",
    "service_callback": "callbacks: lockgate writes an access log line per request and serves /metrics",
    "guardrails": "LiteLLM's guardrails and their settings do not carry over",
    "drop_params": "lockgate drops the fields a translated provider does not take, always",
}


def import_settings(draft: Draft, settings: dict, general: dict) -> None:
    if settings.get("cache"):
        import_cache(draft, settings.get("cache_params"))
    budget = draft.number(settings.get("max_budget"), "litellm_settings.max_budget")
    if budget:
        duration = settings.get("budget_duration")
        period = period_of(duration) or "total"
        if duration is not None and period_of(duration) is None:
            draft.note("litellm_settings.budget_duration: not a day, week or month; imported as a total budget")
        who = {"key": "master"} if general.get("master_key") else {"user": "anonymous"}
        draft.policy("budget").setdefault("budgets", []).append({**who, "limit_usd": budget, "period": period})
        draft.note("litellm_settings.max_budget is proxy-wide: it is the budget of the " + ("master key" if "key" in who else "anonymous caller")
                   + ", the only caller this config has; keys you add get budgets of their own")
    found = first(settings, ("max_internal_user_budget", "max_end_user_budget"), "litellm_settings")
    internal = draft.number(*found) if found else None
    if internal:
        duration = settings.get("internal_user_budget_duration") or settings.get("budget_duration")
        draft.policy("budget")["default"] = {"per": "user", "limit_usd": internal, "period": period_of(duration) or "monthly"}
    handled = {"cache", "cache_params", "max_budget", "budget_duration", "max_internal_user_budget", "max_end_user_budget", "internal_user_budget_duration",
               "max_parallel_requests", *ROUTER_IN_SETTINGS}
    for key in settings:
        if key not in handled:
            draft.note(f"litellm_settings.{key} not carried over" + (f" ({SETTINGS_REASONS[key]})" if key in SETTINGS_REASONS else ""))


def import_cache(draft: Draft, params: Any) -> None:
    if params is None:
        params = {}
    if not isinstance(params, dict):
        draft.note("litellm_settings.cache_params: not a mapping; the cache is imported with lockgate's defaults")
        params = {}
    if params.get("mode") == "default_off":
        draft.note("litellm_settings.cache_params.mode default_off: lockgate's cache is on for every request or off; not enabled")
        return
    ttl = draft.number(params.get("ttl"), "litellm_settings.cache_params.ttl")
    draft.policies["cache"] = {"ttl_s": ttl or 3600, "scope": "global", "models": ["*"]}
    if not ttl:
        draft.note("litellm_settings.cache: no ttl given; lockgate's default of 3600 s applies")
    kind = params.get("type") or "local"
    at = "litellm_settings.cache_params."
    if kind == "redis" and draft.store["backend"] != "redis":
        url = redis_url(draft, {k: (params.get(k), at + k) for k in ("url", "host", "port", "password")})
        if url:
            draft.store = {"backend": "redis", "url": url}
    elif kind == "redis":
        for key in ("url", "host", "port", "password"):
            if key in params:
                draft.note(f"{at}{key} not carried over (cache entries live in the store: router_settings' Redis)")
    elif kind not in ("redis", "local"):
        draft.note(f"litellm_settings.cache_params.type: lockgate keeps cache entries in its store ({draft.store['backend']}), exact-match only")
    for key in params:
        if key not in ("type", "ttl", "host", "port", "password", "url", "mode"):
            draft.note(f"litellm_settings.cache_params.{key} not carried over")


GENERAL_REASONS = {
    "database_url": "virtual keys, teams and spend live in LiteLLM's database; create lockgate keys with `lockgate keys new`",
    "store_model_in_db": "models live in gateway.yaml",
    "alerting": "use /metrics with your alerting",
}


def import_general(draft: Draft, general: dict, settings: dict) -> None:
    master = general.get("master_key")
    if isinstance(master, (dict, list)):
        draft.note("general_settings.master_key: not a single value; not carried over")
    elif master:
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
    found = first(general, ("global_max_parallel_requests", "max_parallel_requests"), "general_settings")
    found = found or first(settings, ("max_parallel_requests",), "litellm_settings")
    concurrent = draft.number(*found, integer=True, minimum=1) if found else None
    if concurrent:
        draft.policy("throttle").setdefault("limits", []).append({"id": "global-parallel", "per": "global", "concurrent": concurrent})
    for key in general:
        if key not in ("master_key", "global_max_parallel_requests", "max_parallel_requests"):
            draft.note(f"general_settings.{key} not carried over" + (f" ({GENERAL_REASONS[key]})" if key in GENERAL_REASONS else ""))


def import_environment(draft: Draft, node: Any) -> None:
    if node is None:
        return
    if not isinstance(node, dict):
        draft.note("environment_variables: not a mapping; not carried over")
        return
    for name in node:
        draft.note(f"environment_variables.{name}: set it in lockgate's environment (its value is not copied)")


# -- guides ------------------------------------------------------------------------

GUIDE_TOP = {"routing_rules", "routing", "models", "model_list", "caching", "budget_limits", "rate_limits", "load_balancing", "fallbacks"}
# names a condition may use without trusting the client: identity, the request's own, the language's words
TRUSTED_NAMES = frozenset(("user", "team", "key", "user_tier", "tier", "model", "hour", "input_length", "stream", "temperature",
                           "and", "or", "not", "in", "true", "false"))


def import_guide(raw: Any, source: str) -> Result:
    draft = Draft(source, taken=referenced_variables(raw) | set(KEY_ENV.values()))
    if not isinstance(raw, dict):
        shape = "empty" if raw is None else f"a {type(raw).__name__}"
        raise ImportRefused([f"{source}: a guide's YAML is a mapping (routing:, models:, caching:, budget_limits:...), not {shape}"])
    for key in raw:
        if key not in GUIDE_TOP:
            draft.note(f"{key}: not a section lockgate knows; not carried over")
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
    serve_chains(draft)
    return draft.render("guide")


def serve_chains(draft: Draft) -> None:
    """Every model a chain names is served (ensure_model), except one whose entry was
    skipped: that one leaves the chains, listed."""
    chains = draft.policies.get("fallback", {}).get("chains", {})
    for model, targets in list(chains.items()):
        for name in (model, *targets):
            if name in draft.unimported:
                draft.note(f"fallbacks of {model}: {name!r} left out (it was skipped)")
            else:
                draft.ensure_model(name, "fallbacks")
        chains[model] = [t for t in targets if t not in draft.unimported]
        if model in draft.unimported or not chains[model]:
            del chains[model]


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
        fallbacks = entry.get("fallbacks")
        if isinstance(params, dict):
            fallbacks = params.get("fallbacks", fallbacks)
            entry = {**entry, "model_name": name, "litellm_params": {k: v for k, v in params.items() if k != "fallbacks"}}
            dep = litellm_deployment(entry, f"{where} ({name})", draft, None)
        elif isinstance(entry.get("model"), str):
            params = {k: v for k, v in entry.items() if k not in ("name", "model_name", "fallbacks", "provider")}
            dep = litellm_deployment({"model_name": name, "litellm_params": params}, f"{where} ({name})", draft, None)
            provider = entry.get("provider")
            if dep is not None and isinstance(provider, str) and provider in PREFIXES:
                dep["provider"] = PREFIXES[provider]
        else:
            dep = None
            draft.ensure_model(name, where)
        if dep is not None:
            draft.add_deployment(name, dep)
        if fallbacks:
            draft.chain(name, draft.model_names(fallbacks, f"{where}.fallbacks"))


def add_rule(draft: Draft, rule: dict) -> None:
    policy = draft.policy("rewrite")
    rules = policy.setdefault("rules", [])
    if rule.get("id") and any(r.get("id") == rule["id"] for r in rules):
        rule["id"] = f"{rule['id']}-{len(rules) + 1}"
    rules.append(rule)
    if needs_trust(rule.get("condition", "")) and not policy.get("trust_client_fields"):
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
    """`load_balancing`: entries naming a provider (every model it serves) or a model,
    with `api_keys` (one deployment per key) and a `strategy`. Also one such entry on
    its own, `{strategy, providers: [...]}`, and `{provider: {api_keys, strategy}}`."""
    strategy = None
    if isinstance(node, dict) and ("provider" in node or "model" in node):
        node = [node]
    elif isinstance(node, dict):
        strategy = node.get("strategy")
        nested = next((node[k] for k in ("providers", "targets", "models") if k in node), None)
        if nested is not None:
            node = nested
        else:
            node = [{"provider": k, **v} if isinstance(v, dict) else {"provider": k, "api_keys": v} for k, v in node.items() if k != "strategy"]
    for index, entry in enumerate(as_list(node, "load_balancing", draft)):
        where = f"load_balancing[{index}]"
        target = entry.get("model", entry.get("provider")) if isinstance(entry, dict) else None
        if not isinstance(target, str) or not isinstance(entry.get("api_keys"), list):
            draft.problems.append(f"{where}: each entry is a mapping with provider (or model) and api_keys")
            continue
        balance_keys(draft, entry, where, strategy)


def balance_keys(draft: Draft, entry: dict, where: str, strategy: Any) -> None:
    if "model" in entry:
        draft.ensure_model(entry["model"], where)
        targets = [draft.models[entry["model"]]]
        hint = entry["model"]
    else:
        provider = PREFIXES.get(entry["provider"], entry["provider"])
        if provider not in PREFIXES.values():
            draft.problems.append(f"{where}: unknown provider {entry['provider']!r}")
            return
        targets = [m for m in draft.models.values() if m["deployments"] and m["deployments"][0]["provider"] == provider]
        if not targets:
            draft.ensure_model(entry["provider"], where)
            targets = [draft.models[entry["provider"]]]
        hint = provider
    strategy = entry.get("strategy", strategy) or "round_robin"
    balance = GUIDE_STRATEGIES.get(strategy) if isinstance(strategy, str) else None
    if balance is None:
        draft.note(f"{where}.strategy: no lockgate equivalent; round_robin")
        balance = "round_robin"
    keys = []
    for n, item in enumerate(entry["api_keys"]):
        at = f"{where}.api_keys[{n}]"
        value, weight = (item.get("key", item.get("api_key")), item.get("weight")) if isinstance(item, dict) else (item, None)
        key = draft.secret(value, at, f"{hint}_API_KEY_{n + 1}")
        if key is None:
            draft.note(f"{at}: no key; not carried over")
            continue
        weight = draft.number(weight, f"{at}.weight") if weight is not None else None
        keys.append({"api_key": key, **({"weight": weight} if weight else {})})
    for model in targets:
        template = model["deployments"][0]
        model["deployments"] = [{**template, **key} for key in keys] or model["deployments"]
        draft.set_balance(model["name"], balance)
    for extra in entry:
        if extra not in ("provider", "model", "api_keys", "strategy"):
            draft.note(f"{where}.{extra} not carried over")


FALLBACK_TARGETS = ("fallback", "fallbacks", "fallback_models", "fallback_model", "secondary")


def guide_fallbacks(draft: Draft, node: Any) -> None:
    """`fallbacks`: entries `{primary | model: NAME, fallback: NAME | [NAMES]}` (a repeated
    `fallback:` key keeps every value), or LiteLLM's own `{NAME: [NAMES]}`."""
    if isinstance(node, dict):
        node = [node]
    for index, entry in enumerate(as_list(node, "fallbacks", draft)):
        where = f"fallbacks[{index}]"
        if not isinstance(entry, dict):
            draft.problems.append(f"{where}: each entry is a mapping")
            continue
        if any(k in entry for k in ("primary", "model", *FALLBACK_TARGETS)):
            primary = entry.get("primary", entry.get("model"))
            key = next((k for k in FALLBACK_TARGETS if k in entry), None)
            targets = draft.model_names(entry[key], f"{where}.{key}") if key else []
            if not isinstance(primary, str) or not primary or not targets:
                draft.problems.append(f"{where}: a fallback names the model to leave (primary or model) and where to go (fallback)")
                continue
            draft.chain(primary, targets)
            for extra in entry:
                if extra not in ("primary", "model", key):
                    draft.note(f"{where}.{extra} not carried over")
        else:
            for model, targets in entry.items():
                draft.chain(str(model), draft.model_names(targets, f"{where}.{model}"))


CACHE_SCOPES = (("user", "user"), ("team", "team"), ("key", "key"))
PER_MODEL_TTL = ("models", "per_model", "model_ttl", "model_ttls", "ttl_by_model", "per_model_ttl")


def guide_caching(draft: Draft, node: Any) -> None:
    """`caching: {enabled, ttl, key_generation}`, per-model TTLs as `{model: ttl}`,
    `{model: {ttl}}` or `[{model, ttl}]` under `models` (or `model_ttl`, `ttl_by_model`...)."""
    if node is None:
        return
    if not isinstance(node, dict):
        draft.problems.append("caching must be a mapping")
        return
    if node.get("enabled") is False:
        draft.note("caching.enabled is false: no cache")
        return
    key = str(node.get("key_generation") or "").lower()
    scope = next((scope for word, scope in CACHE_SCOPES if word in key), "global")
    ttl_key = "ttl" if "ttl" in node else "default_ttl"
    ttl = draft.duration(node.get(ttl_key), f"caching.{ttl_key}")
    cache: dict[str, Any] = {"ttl_s": ttl or 3600, "scope": scope, "models": ["*"]}
    per_key = next((k for k in PER_MODEL_TTL if k in node), None)
    if per_key:
        by_model = model_ttls(draft, node[per_key], f"caching.{per_key}")
        if by_model:
            cache["ttl_by_model"] = by_model
    if scope != "global":
        cache["trust_client_user"] = True
        draft.note(f"caching.key_generation: entries per {scope}, plus the normalized request (the prompt's hash); without auth, "
                   "the user comes from the x-lockgate-user header (trust_client_user)")
    draft.policies["cache"] = cache
    for extra in node:
        if extra not in ("enabled", "ttl", "default_ttl", "key_generation", per_key):
            draft.note(f"caching.{extra} not carried over")


def model_ttls(draft: Draft, node: Any, where: str) -> dict[str, Any]:
    pairs: list[tuple[Any, Any, str]] = []
    if isinstance(node, dict):
        pairs = [(model, value.get("ttl") if isinstance(value, dict) else value, f"{where}.{model}") for model, value in node.items()]
    elif isinstance(node, list):
        pairs = [(e.get("model"), e.get("ttl"), f"{where}[{i}]") if isinstance(e, dict) else (None, None, f"{where}[{i}]") for i, e in enumerate(node)]
    else:
        draft.note(f"{where}: not a mapping of model to ttl; not carried over")
    found = {}
    for model, value, at in pairs:
        ttl = draft.duration(value, f"{at}.ttl") if isinstance(model, str) else None
        if ttl is None and not isinstance(model, str):
            draft.note(f"{at}: names no model; not carried over")
        if ttl is not None and isinstance(model, str):
            found[model] = ttl
    return found


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
        (period, amount), *rest = limits
        limit = draft.number(amount, f"{where}.{period}")
        if limit is None:
            continue
        policy = draft.policy("budget")
        policy.setdefault("budgets", []).append({who[0]: str(who[1]), "limit_usd": limit, "period": PERIODS[period]})
        if who[0] != "key" and not policy.get("trust_client_user"):
            policy["trust_client_user"] = True
            draft.note("budgets name users and teams: without auth the user comes from the x-lockgate-user header (trust_client_user); with auth, from the key")
        for key, _ in rest:
            draft.note(f"{where}: {key} not carried over (lockgate has one budget per {who[0]}; {period} was kept)")
        currency = str(entry.get("currency") or "USD").upper()
        if currency != "USD":
            draft.note(f"{where}: currency {currency}: lockgate budgets are in USD; the amount was kept as it is")
        for extra in entry:
            if extra not in PERIODS and extra not in ("user_id", "user", "team", "key", "currency"):
                draft.note(f"{where}.{extra} not carried over")


RATES = {"requests_per_minute": "rpm", "rpm": "rpm", "tokens_per_minute": "tpm", "tpm": "tpm",
         "concurrent": "concurrent", "max_parallel_requests": "concurrent", "concurrent_requests": "concurrent"}
# who a limit is for: its selector key in an entry, and the throttle dimension
SELECTORS = (("user_id", "user"), ("user", "user"), ("team", "team"), ("key", "key"), ("model", "model"))
# the blocks of a `rate_limits:` mapping, by name: the dimension each counts per
SCOPES = {"global": "global", "default": "global", "all": "global", "proxy": "global", "per_user": "user", "user": "user", "users": "user",
          "per_team": "team", "team": "team", "teams": "team", "per_key": "key", "key": "key", "keys": "key", "api_key": "key",
          "per_api_key": "key", "per_model": "model", "model": "model", "models": "model"}


def guide_rate_limits(draft: Draft, node: Any) -> None:
    """`rate_limits`: a list of limits (each for a user_id, team, key or model, or
    global), or a mapping of blocks by scope, `global: {requests_per_minute: ...}`,
    `per_user: {...}` (every user alike), `per_model: {gpt-4: {...}}` (one model each)."""
    if isinstance(node, dict) and not any(k in RATES for k in node):
        for scope, block in node.items():
            per = SCOPES.get(scope) if isinstance(scope, str) else None
            if per is None:
                draft.note(f"rate_limits.{scope}: not a scope lockgate knows (global, per_user, per_team, per_key, per_model); not carried over")
            else:
                rate_block(draft, block, f"rate_limits.{scope}", per)
        return
    if isinstance(node, dict):
        node = [node]
    for index, entry in enumerate(as_list(node, "rate_limits", draft)):
        if not isinstance(entry, dict):
            draft.problems.append(f"rate_limits[{index}]: each limit is a mapping")
            continue
        per = next((dim for src, dim in SELECTORS if src in entry), SCOPES.get(str(entry.get("scope", entry.get("per", "global")))))
        add_limit(draft, entry, f"rate_limits[{index}]", per or "global")


def rate_block(draft: Draft, block: Any, where: str, per: str) -> None:
    """One scope's block: limits for every member alike, a list of limits each naming
    its member, or a mapping of member name to limits."""
    if isinstance(block, list):
        for index, entry in enumerate(block):
            if isinstance(entry, dict):
                add_limit(draft, entry, f"{where}[{index}]", per)
            else:
                draft.note(f"{where}[{index}]: not a mapping of limits; not carried over")
    elif isinstance(block, dict) and (per == "global" or any(k in RATES for k in block)):
        add_limit(draft, block, where, per)
    elif isinstance(block, dict):
        for name, limits in block.items():
            if isinstance(limits, dict):
                add_limit(draft, {**limits, per: str(name)}, f"{where}.{name}", per)
            else:
                draft.note(f"{where}.{name}: not a mapping of limits; not carried over")
    else:
        draft.note(f"{where}: not a mapping of limits; not carried over")


def add_limit(draft: Draft, entry: dict, where: str, per: str) -> None:
    limits = draft.policy("throttle").setdefault("limits", [])
    limit: dict[str, Any] = {"id": f"imported-{len(limits) + 1}", "per": per}
    selector = next((src for src, dim in SELECTORS if dim == per and src in entry), None)
    if selector is not None:
        limit["match"] = {per: str(entry[selector])}
    for source, target in RATES.items():
        if source in entry and target not in limit:
            value = draft.number(entry[source], f"{where}.{source}", integer=True, minimum=1)
            if value is not None:
                limit[target] = value
    if not any(k in limit for k in ("rpm", "tpm", "concurrent")):
        draft.problems.append(f"{where}: a limit needs requests_per_minute, tokens_per_minute or concurrent")
        return
    limits.append(limit)
    if per in ("user", "team"):
        draft.policy("throttle")["trust_client_user"] = True
    for extra in entry:
        if extra not in RATES and extra not in (selector, "scope", "per"):
            draft.note(f"{where}.{extra} not carried over")


# -- writing -------------------------------------------------------------------------


def run(kind: str, path: Path) -> Result:
    """The files an import of `path` writes (raises ImportRefused)."""
    raw = read(path, keep_duplicates=kind == "guide")
    importer = import_litellm if kind == "litellm" else import_guide
    return importer(raw, path.name)


def write(result: Result, directory: Path) -> list[Path]:
    """Writes every file of `result` into `directory` (made if missing); ImportRefused
    when it cannot, with what was already written left in place and named."""
    written: list[Path] = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in result.files.items():
            target = directory / name
            target.write_text(text)
            written.append(target)
    except FileExistsError:
        raise ImportRefused([f"{directory}: is a file, not a directory"]) from None
    except OSError as exc:
        done = f" (written before that: {', '.join(str(p) for p in written)})" if written else ""
        raise ImportRefused([f"{exc.filename or directory}: cannot write: {exc.strerror}{done}"]) from None
    return written
