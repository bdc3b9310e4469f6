"""Voyage AI (api.voyageai.com/v1): rerank translated from and to Cohere's shape, and
embeddings, whose request is OpenAI's and whose answer nearly is.

Choices where the formats do not line up:
- Cohere's `top_n` is Voyage's `top_k`; Voyage answers in `data`, not `results`.
- Voyage truncates over-long inputs by default; a client's `truncation` goes through.
- Voyage counts only `usage.total_tokens`: rerank answers bill it as
  `meta.billed_units.input_tokens`, embeddings answers as `prompt_tokens` too.
- Chat is not served: a 400 says so rather than an upstream 404.
"""

from __future__ import annotations

from lockgate.providers import rerank, shapes
from lockgate.providers.base import Deployment, UnsupportedRequest, UpstreamRequest
from lockgate.providers.presets import PRESETS, PresetAdapter


def rerank_body(body: dict, model: str) -> dict:
    out: dict = {"model": model, "query": str(body.get("query") or ""), "documents": rerank.texts(body), "return_documents": False}
    if rerank.top_n(body) is not None:
        out["top_k"] = rerank.top_n(body)
    if isinstance(body.get("truncation"), bool):
        out["truncation"] = body["truncation"]
    return out


def from_voyage(data: dict, body: dict) -> dict:
    scored, documents = rerank.scored_results(data.get("data"))
    return rerank.answer(body, scored, rerank.token_billing(data), None, documents)


class VoyageAdapter(PresetAdapter):
    def chat_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        raise UnsupportedRequest(f"{self.name} deployments serve embeddings and rerank, not chat")

    def embeddings_response(self, dep: Deployment, data: dict, body: dict | None = None) -> dict:
        usage = shapes.part(data.get("usage"))
        tokens = usage.get("total_tokens") or 0
        return {**data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    def rerank_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        return self.build(dep, "rerank", rerank_body(body, dep.model))

    def rerank_response(self, dep: Deployment, data: dict, body: dict) -> dict:
        return from_voyage(data, body)


ADAPTER = VoyageAdapter("voyage", PRESETS["voyage"])
