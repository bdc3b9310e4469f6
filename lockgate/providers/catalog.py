"""What lockgate knows of models beyond their names: context window, output limit, vision
and reasoning support of the common model families (what `/v1/model/info` says when
gateway.yaml does not; matched by glob on the upstream model name, first match wins), and
the `Catalog` a budget prices with."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any, Protocol

from lockgate.providers.base import Deployment, Price
from lockgate.providers.prices import base_name, lookup

# (glob, max_input_tokens, max_tokens, supports_vision, supports_reasoning)
FAMILIES: tuple[tuple[str, int, int, bool, bool], ...] = (
    ("gpt-4.1*", 1_047_576, 32_768, True, False),
    ("gpt-4o*", 128_000, 16_384, True, False),
    ("gpt-4-turbo*", 128_000, 4_096, True, False),
    ("gpt-4*", 8_192, 4_096, False, False),
    ("gpt-3.5*", 16_385, 4_096, False, False),
    ("gpt-5*", 272_000, 128_000, True, True),
    ("o1*", 200_000, 100_000, True, True),
    ("o3*", 200_000, 100_000, True, True),
    ("o4*", 200_000, 100_000, True, True),
    ("claude-3-5-haiku*", 200_000, 8_192, True, False),
    ("claude-3-haiku*", 200_000, 4_096, True, False),
    ("claude-3*", 200_000, 8_192, True, False),
    ("claude-*", 200_000, 64_000, True, True),
    ("gemini-1.5*", 1_048_576, 8_192, True, False),
    ("gemini-2.0*", 1_048_576, 8_192, True, False),
    ("gemini-*", 1_048_576, 65_536, True, True),
    ("text-embedding-*", 8_191, 0, False, False),
    ("nova-micro*", 128_000, 10_000, False, False),
    ("nova-premier*", 1_000_000, 32_000, True, False),
    ("nova-*", 300_000, 10_000, True, False),
    ("titan-embed*", 8_192, 0, False, False),
    ("llama3-*", 128_000, 8_192, False, False),
    ("llama-3.2-*vision*", 128_000, 8_192, True, False),
    ("llama-3*", 131_072, 32_768, False, False),
    ("*llama-3*", 131_072, 8_192, False, False),
    ("llama-v3*", 131_072, 16_384, False, False),
    ("command-a*", 256_000, 8_000, False, False),
    ("command-r*", 128_000, 4_000, False, False),
    ("embed-*", 512, 0, False, False),
    ("mistral-large*", 128_000, 8_192, False, False),
    ("pixtral*", 128_000, 8_192, True, False),
    ("mistral-medium*", 128_000, 8_192, True, False),
    ("mistral-small*", 128_000, 8_192, True, False),
    ("codestral*", 256_000, 8_192, False, False),
    ("mistral-embed*", 8_192, 0, False, False),
    ("deepseek-reasoner*", 64_000, 32_768, False, True),
    ("deepseek-*", 64_000, 8_192, False, False),
    ("grok-4*", 256_000, 64_000, True, True),
    ("grok-3-mini*", 131_072, 32_768, False, True),
    ("grok-*", 131_072, 32_768, False, False),
    ("sonar-reasoning*", 128_000, 8_192, False, True),
    ("sonar*", 128_000, 8_192, False, False),
    ("gemma*", 8_192, 8_192, False, False),
    ("mixtral*", 32_768, 32_768, False, False),
)
DEFAULT = (128_000, 4_096, False, False)


@functools.lru_cache(maxsize=1024)
def family(model: str) -> tuple[int, int, bool, bool]:
    """(max_input_tokens, max_tokens, supports_vision, supports_reasoning) of a model name."""
    name = base_name(model)
    for pattern, *values in FAMILIES:
        if fnmatchcase(name, pattern):
            return tuple(values)  # type: ignore[return-value]
    return DEFAULT


def output_limit(deployment: Deployment, overrides: Mapping[str, Any]) -> int:
    """The most answer tokens the deployment's model gives (its `info:` max_tokens, else
    the family's), for a reservation that must cover a whole answer."""
    configured = overrides.get("max_tokens")
    if isinstance(configured, int) and configured > 0:
        return configured
    return family(deployment.model)[1] or DEFAULT[1]


def model_info(deployment: Deployment, overrides: Mapping[str, Any]) -> dict:
    name = base_name(deployment.model)
    max_input, max_output, vision, reasoning = family(name)
    mode = "embedding" if "embed" in name else "chat"
    info = {
        "max_input_tokens": max_input,
        "max_tokens": max_output,
        "max_output_tokens": max_output,
        "supports_vision": vision,
        "supports_reasoning": reasoning,
        "supports_function_calling": mode == "chat",
        "litellm_provider": deployment.provider,
        "mode": mode,
    }
    info.update(overrides)
    return info


class Catalog(Protocol):
    """What a budget asks of the models it prices. lockgate's gateway answers from
    gateway.yaml's deployments (proxy/config.py `ConfigCatalog`); around another app, the
    built-in tables answer (`BUILTIN`)."""

    def price(self, model: str) -> Price | None:
        """The price of a model name: a served model's (its first deployment's), else the table's."""

    def deployment_price(self, deployment: str | None) -> Price | None:
        """A deployment's own configured `price`, by its id (None: it has none)."""

    def output_limit(self, model: str) -> int:
        """The most answer tokens the model's deployments give."""

    def serves(self, model: str) -> bool:
        """Whether the name is a model served as such (else an alias resolved further in)."""

    def names(self) -> Iterable[str]:
        """The model names served."""


class BuiltinCatalog:
    """The built-in price table and model families: every name is taken as it is."""

    def price(self, model: str) -> Price | None:
        return lookup(model)

    def deployment_price(self, deployment: str | None) -> Price | None:
        return None

    def output_limit(self, model: str) -> int:
        return family(model)[1] or DEFAULT[1]

    def serves(self, model: str) -> bool:
        return True

    def names(self) -> Iterable[str]:
        return ()


BUILTIN: Catalog = BuiltinCatalog()
