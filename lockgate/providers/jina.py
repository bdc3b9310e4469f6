"""Jina AI (api.jina.ai/v1): rerank translated from and to Cohere's shape, and its
OpenAI-compatible embeddings passed through.

Choices where the formats do not line up:
- Jina returns each document unless told not to: lockgate asks it not to, and adds the
  documents asked for from the request (providers/rerank.py), as for every provider.
- Jina bills rerank by tokens (`usage.total_tokens`): the answer's
  `meta.billed_units.input_tokens`.
- Chat is not served: a 400 says so rather than an upstream 404.
"""

from __future__ import annotations

from lockgate.providers import rerank
from lockgate.providers.base import Deployment, UnsupportedRequest, UpstreamRequest
from lockgate.providers.presets import PRESETS, PresetAdapter


def rerank_body(body: dict, model: str) -> dict:
    out: dict = {"model": model, "query": str(body.get("query") or ""), "documents": rerank.texts(body), "return_documents": False}
    if rerank.top_n(body) is not None:
        out["top_n"] = rerank.top_n(body)
    return out


class JinaAdapter(PresetAdapter):
    def chat_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        raise UnsupportedRequest(f"{self.name} deployments serve embeddings and rerank, not chat")

    def rerank_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        return self.build(dep, "rerank", rerank_body(body, dep.model))

    def rerank_response(self, dep: Deployment, data: dict, body: dict) -> dict:
        return rerank.from_compatible(data, body)


ADAPTER = JinaAdapter("jina", PRESETS["jina"])
