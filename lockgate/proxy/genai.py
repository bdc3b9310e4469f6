"""OpenTelemetry's GenAI semantic conventions as lockgate names them: which operation a
route is, which provider a deployment is, and the token counts of a request, for the
traces (proxy/tracing.py) and the `gen_ai_*` metrics (proxy/access.py) alike.

Choices where lockgate's world and the conventions do not line up:
- `/v1/responses` and `/v1/messages` are `chat` (the conventions have no operation of
  their own for them); `/v1/completions` is `text_completion` (each endpoint kind's
  `operation` in providers/endpoints.py). A route with no operation (`/v1/models`,
  rerank, images, admin) gets no `gen_ai.*` attributes or metrics.
- Providers the conventions list keep their names (`azure.ai.openai`, `gcp.gemini`,
  `gcp.vertex_ai`, `aws.bedrock`, `x_ai`, `mistral_ai`: each entry's `semconv` in
  providers/registry.py); the others (`mock`, `ollama`,
  `together`...) are lockgate's provider key, as the conventions allow for the unlisted.
- `gen_ai.response.model` is the deployment's upstream model from gateway.yaml, not the
  name an upstream wrote in its answer: a metric label may only take values the operator
  chose.
- Input tokens count every prompt token, cached ones included (OpenAI's rule, and the
  conventions'); cache reads and writes are reported beside them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lockgate.providers import registry
from lockgate.providers.endpoints import ENTRIES

OPERATIONS = {path: kind.operation for kind in ENTRIES if kind.operation for path in kind.paths}


def provider_name(provider: str) -> str:
    return registry.semconv_name(provider)


def deployment_of(models: Any, served: str | None, deployment_id: str | None) -> Any:
    """The deployment `deployment_id` of the served model in a gateway's `models` mapping."""
    model = models.get(served) if served and deployment_id and isinstance(models, Mapping) else None
    if model is None:
        return None
    for dep in model.deployments:
        if dep.id == deployment_id:
            return dep
    return None


def tokens(usage: Any) -> dict[str, int]:
    """`input`, `output`, `cache_read`, `cache_creation` of an OpenAI-shaped usage, the
    ones it reports (anything malformed counts as not reported)."""
    if not isinstance(usage, dict):
        return {}
    found: dict[str, int] = {}
    for kind, value in (("input", usage.get("prompt_tokens")), ("output", usage.get("completion_tokens"))):
        tokens = count(value)
        if tokens is not None:
            found[kind] = tokens
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):
        for kind, name in (("cache_read", "cached_tokens"), ("cache_creation", "cache_write_tokens")):
            tokens = count(details.get(name))
            if tokens:
                found[kind] = tokens
    return found


def count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
        return None
    return int(value)
