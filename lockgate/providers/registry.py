"""Every provider gateway.yaml accepts, one entry each: its adapter, the deployment
settings only it takes and how they become a deployment's `options`, where its key and
base URL come from when a deployment sets none, and its name in OpenTelemetry's GenAI
conventions. gateway.yaml's parsing (proxy/models.py) and the proxy (proxy/handlers.py)
read nothing else about a provider.

Credentials are turned into objects here, once per config: AWS credentials per
deployment, Google token sources shared by every deployment naming the same
service account (so one token serves them all).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from lockgate.providers import anthropic, azure, bedrock, cohere, gemini, jina, mock, openai, vertex, voyage
from lockgate.providers.base import Adapter, SettingError
from lockgate.providers.presets import PRESETS, PresetAdapter

Options = Callable[[dict, dict], dict]  # (the provider's settings as given, state shared across one config) -> options


def no_options(values: dict, shared: dict) -> dict:
    return {}


@dataclass(frozen=True, slots=True)
class ProviderEntry:
    name: str
    adapter: Adapter
    # deployment keys only this provider takes, each read as a string (str) or a number (float)
    settings: Mapping[str, type] = field(default_factory=dict)
    options: Options = no_options  # raises SettingError
    base_url: str = ""  # used when a deployment sets none
    base_url_required: str | None = None  # the problem reported when there is none at all
    key_env: str | None = None  # the variable `api_key` is read from when a deployment sets none
    key_required: bool = True  # whether that variable must be set (hosted) or may be left out (local servers)
    keyless: str | None = None  # what it authenticates with instead of an api_key (then api_key is refused)
    model_required: bool = True  # False: a deployment's model defaults to the model's name
    semconv: str | None = None  # its name in the GenAI conventions, where they list it (else `name`)

    def default_api_key(self) -> str | None:
        """The key from the provider's usual variable, for a deployment that sets none.
        Raises `SettingError` for a hosted provider when the variable is not set."""
        if self.key_env is None:
            return None
        value = os.environ.get(self.key_env)
        if not value and self.key_required:
            raise SettingError(None, f"a {self.name} deployment needs api_key, or {self.key_env} set in the environment")
        return value or None


def vertex_options(values: dict, shared: dict) -> dict:
    return vertex.deployment_options(values, shared.setdefault("google_tokens", {}))


# the hosts that serve embeddings and rerank only, in shapes of their own
OWN_ADAPTERS: dict[str, Adapter] = {"jina": jina.ADAPTER, "voyage": voyage.ADAPTER}


def preset(name: str) -> ProviderEntry:
    """An OpenAI-compatible host of providers/presets.py."""
    host = PRESETS[name]
    adapter = OWN_ADAPTERS.get(name) or PresetAdapter(name, host)
    return ProviderEntry(name, adapter, base_url=host.base_url, key_env=host.key_env, key_required=host.key_required, semconv=host.semconv)


ENTRIES = (
    ProviderEntry("openai", openai.ADAPTER),
    ProviderEntry(
        "azure", azure.ADAPTER, base_url_required="an azure deployment needs base_url (https://RESOURCE.openai.azure.com)", semconv="azure.ai.openai",
    ),
    ProviderEntry("anthropic", anthropic.ADAPTER),
    ProviderEntry("gemini", gemini.ADAPTER, semconv="gcp.gemini"),
    ProviderEntry("mock", mock.ADAPTER, settings=dict.fromkeys(mock.SETTINGS, float), options=mock.deployment_options, model_required=False),
    ProviderEntry(
        "bedrock", bedrock.ADAPTER, settings=dict.fromkeys(bedrock.SETTINGS, str), options=lambda values, shared: bedrock.deployment_options(values),
        keyless="aws_access_key_id / aws_secret_access_key (or the AWS chain)", semconv="aws.bedrock",
    ),
    ProviderEntry(
        "vertex", vertex.ADAPTER, settings=dict.fromkeys(vertex.SETTINGS, str), options=vertex_options,
        keyless="credentials (or Application Default Credentials)", semconv="gcp.vertex_ai",
    ),
    ProviderEntry("cohere", cohere.ADAPTER, key_env="COHERE_API_KEY"),
    *(preset(name) for name in PRESETS),
)
PROVIDERS: dict[str, ProviderEntry] = {entry.name: entry for entry in ENTRIES}
SETTING_KEYS = frozenset(key for entry in ENTRIES for key in entry.settings)


def providers_with(key: str) -> str:
    return ", ".join(entry.name for entry in PROVIDERS.values() if key in entry.settings)


def semconv_name(provider: str) -> str:
    entry = PROVIDERS.get(provider)
    return entry.semconv or provider if entry is not None else provider

