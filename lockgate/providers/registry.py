"""The providers gateway.yaml accepts beyond the first five, the deployment settings
each takes, and how those settings become a deployment's `options`.

Credentials are turned into objects here, once per config: AWS credentials per
deployment, Google token sources shared by every deployment naming the same
service account (so one token serves them all).
"""

from __future__ import annotations

import os

from lockgate.providers import bedrock, vertex
from lockgate.providers.base import SettingError
from lockgate.providers.presets import PRESETS

PROVIDERS = ("bedrock", "vertex", "cohere", *PRESETS)
SETTINGS: dict[str, tuple[str, ...]] = {"bedrock": bedrock.SETTINGS, "vertex": vertex.SETTINGS}
KEYS = frozenset(key for keys in SETTINGS.values() for key in keys)
KEY_ENV = {"cohere": "COHERE_API_KEY", **{name: preset.key_env for name, preset in PRESETS.items()}}
# providers whose credentials are not an API key: an `api_key` on them would do nothing
KEYLESS = {"bedrock": "aws_access_key_id / aws_secret_access_key (or the AWS chain)", "vertex": "credentials (or Application Default Credentials)"}


def options(provider: str, values: dict, shared: dict) -> dict:
    """The deployment's options from its provider settings; `shared` lives as long as
    the config being read. Raises `SettingError`."""
    if provider == "bedrock":
        return bedrock.deployment_options(values)
    if provider == "vertex":
        return vertex.deployment_options(values, shared.setdefault("google_tokens", {}))
    return {}


def default_base_url(provider: str) -> str:
    preset = PRESETS.get(provider)
    return preset.base_url if preset else ""


def default_api_key(provider: str) -> str | None:
    """The key from the provider's usual variable, for a deployment that sets none.
    Raises `SettingError` for a hosted provider when the variable is not set."""
    name = KEY_ENV.get(provider)
    if name is None:
        return None
    value = os.environ.get(name)
    preset = PRESETS.get(provider)
    if not value and (preset is None or preset.key_required):
        raise SettingError(None, f"a {provider} deployment needs api_key, or {name} set in the environment")
    return value or None


def providers_with(key: str) -> str:
    return ", ".join(name for name, keys in SETTINGS.items() if key in keys)
