"""Azure OpenAI: OpenAI's wire format at per-deployment URLs, keyed by `api-key`.

The deployment's `model` is the Azure deployment name; `api_version` goes in the query.
"""

from __future__ import annotations

from urllib.parse import quote

from lockgate.providers.base import Deployment, UnsupportedRequest, join_url
from lockgate.providers.openai import OpenAIAdapter

DEFAULT_API_VERSION = "2024-10-21"


class AzureAdapter(OpenAIAdapter):
    name = "azure"

    def url(self, dep: Deployment, path: str) -> str:
        if not dep.base_url:
            raise UnsupportedRequest("azure deployments need a base_url (https://RESOURCE.openai.azure.com)")
        if path == "responses":
            # the Responses API is served on Azure's version-less v1 surface
            return join_url(dep.base_url, "openai/v1/responses")
        version = dep.api_version or DEFAULT_API_VERSION
        return join_url(dep.base_url, f"openai/deployments/{quote(dep.model, safe='')}/{path}?api-version={version}")

    def headers(self, dep: Deployment) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if dep.api_key:
            headers["api-key"] = dep.api_key
        headers.update(dep.headers)
        return headers


ADAPTER = AzureAdapter()
