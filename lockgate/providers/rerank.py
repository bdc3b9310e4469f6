"""Rerank (`POST /v1/rerank`, `/rerank`, `/v2/rerank`): Cohere's request and answer
shape, which Onyx's LiteLLM reranker and LiteLLM Proxy speak, translated for each
provider (providers/cohere.py, jina.py, voyage.py) and passed to any server that
speaks it (vLLM, TEI, Infinity: an `openai` deployment's `{base_url}/rerank`).

Choices where the formats do not line up:
- Documents may be strings or objects (Cohere v1, LiteLLM). Upstreams that take only
  strings get an object's `text`, or, with `rank_fields`, those fields as `name: value`
  lines (Cohere's advice for structured documents), else every field so.
- The answer is Cohere's v2 shape: `id`, `results` (`index`, `relevance_score`, most
  relevant first, at most `top_n`) and `meta` (`api_version`, `billed_units` with
  `search_units` where the upstream bills by search, else `input_tokens`). With
  `return_documents: true` each result carries `document: {"text"}` (v1's shape, which
  LiteLLM returns) taken from the request when the upstream does not send it back
  (Cohere v2 never does); without it no document is returned, whatever the upstream sent.
- `max_chunks_per_doc` (v1 only) is dropped for upstreams that do not take it.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from lockgate.providers import shapes
from lockgate.providers.base import TranslationError, UnsupportedRequest
from lockgate.providers.tokens import text_tokens

API_VERSION = {"version": "2"}


def document_text(document: Any, rank_fields: Any = None) -> str:
    if isinstance(document, str):
        return document
    if not isinstance(document, dict):
        raise UnsupportedRequest("each document must be a string or an object", "documents")
    fields = [f for f in rank_fields if isinstance(f, str)] if isinstance(rank_fields, list) else []
    if not fields and isinstance(document.get("text"), str):
        return document["text"]
    names = fields or list(document)
    return "\n".join(f"{name}: {document[name]}" for name in names if name in document)


def texts(body: dict) -> list[str]:
    documents = body.get("documents")
    if not isinstance(documents, list):
        raise UnsupportedRequest("`documents` must be an array", "documents")
    return [document_text(d, body.get("rank_fields")) for d in documents]


def top_n(body: dict) -> int | None:
    value = body.get("top_n")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def answer(body: dict, scored: list[tuple[int, float]], billed: dict, rid: str | None = None, documents: dict[int, Any] | None = None) -> dict:
    """Cohere's answer from (index, score) pairs, best first and cut at top_n; `billed`
    is `meta.billed_units`; `documents` what the upstream sent back, by index."""
    ranked = sorted(scored, key=lambda pair: -pair[1])
    limit = top_n(body)
    if limit is not None:
        ranked = ranked[:limit]
    with_documents = body.get("return_documents") is True
    sources = shapes.listed(body.get("documents"))
    results = []
    for index, score in ranked:
        result: dict = {"index": index, "relevance_score": score}
        if with_documents:
            given = (documents or {}).get(index)
            text = given.get("text") if isinstance(given, dict) else given if isinstance(given, str) else None
            if text is None and 0 <= index < len(sources):
                text = document_text(sources[index], body.get("rank_fields"))
            result["document"] = {"text": text or ""}
        results.append(result)
    return {"id": rid or str(uuid.uuid4()), "results": results, "meta": {"api_version": API_VERSION, "billed_units": billed}}


def scored_results(items: Any) -> tuple[list[tuple[int, float]], dict[int, Any]]:
    """(index, score) pairs and returned documents of a results list (`relevance_score`, or
    TEI's `score`); anything malformed is the upstream's fault and raises."""
    if not isinstance(items, list):
        raise TranslationError("the upstream's rerank answer has no results list")
    scored, documents = [], {}
    for item in items:
        if not isinstance(item, dict):
            raise TranslationError("a rerank result that is not an object")
        index = item.get("index")
        score = item.get("relevance_score", item.get("score"))
        if not isinstance(index, int) or isinstance(index, bool) or not isinstance(score, (int, float)) or isinstance(score, bool):
            raise TranslationError("a rerank result without an index and a score")
        scored.append((index, float(score)))
        if "document" in item:
            documents[index] = item["document"]
    return scored, documents


def token_billing(data: dict) -> dict:
    usage = shapes.part(data.get("usage"))
    tokens = shapes.count(usage.get("total_tokens")) or shapes.count(usage.get("prompt_tokens"))
    return {"input_tokens": int(tokens)}


# -- servers that speak Cohere's shape (vLLM, TEI, Infinity) ---------------------------


def compatible_request(body: dict, model: str) -> dict:
    """Cohere's request as the client sent it, with the deployment's model."""
    return {**body, "model": model}


def from_compatible(data: dict, body: dict) -> dict:
    scored, documents = scored_results(data.get("results"))
    billed = (data.get("meta") or {}).get("billed_units") if isinstance(data.get("meta"), dict) else None
    return answer(body, scored, billed if isinstance(billed, dict) else token_billing(data), data.get("id"), documents)


# -- the mock provider -----------------------------------------------------------------

WORD = re.compile(r"\w+")


def mock_scores(body: dict) -> list[tuple[int, float]]:
    """Deterministic relevance: the share of the query's words a document holds."""
    query = {w.lower() for w in WORD.findall(str(body.get("query") or ""))}
    out = []
    for index, text in enumerate(texts(body)):
        words = {w.lower() for w in WORD.findall(text)}
        out.append((index, round(len(query & words) / len(query), 6) if query else 0.0))
    return out


def mock_answer(body: dict) -> dict:
    tokens = text_tokens(str(body.get("query") or "")) + sum(text_tokens(t) for t in texts(body))
    return {"id": str(uuid.uuid4()), "results": [{"index": i, "relevance_score": s} for i, s in mock_scores(body)], "usage": {"total_tokens": tokens}}
