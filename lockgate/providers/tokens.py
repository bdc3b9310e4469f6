"""Token counts for before the upstream has counted.

Two kinds, for two uses:

- `prompt_tokens`, an *estimate*: about four ASCII characters a token (OpenAI's own
  guidance for English) and one token for every byte a character takes past the first
  (so a CJK character counts 2 and an emoji 3, where tokenizers give 1-3). Rate limits
  and the mock use it; what they record in the end comes from the upstream's usage.
- `prompt_tokens_bound`, an *upper bound*: every tokenizer lockgate prices (byte-level
  BPE for OpenAI and Anthropic, SentencePiece with byte fallback for Gemini) gives a
  token at least one byte of text, so a prompt is never more tokens than its bytes. The
  request's JSON is the bytes of its text plus its punctuation, which outweighs the
  per-message tokens providers add; an image counts IMAGE_TOKENS_BOUND instead of its
  base64. Budgets reserve this, so a budget holds whatever the text's token ratio.
"""

from __future__ import annotations

from typing import Any

IMAGE_TOKENS = 765  # estimate: OpenAI's cost of one high-detail 512px tile set, a fair stand-in
# bound: the most any provider lockgate prices bills one image (OpenAI's patch-based models
# top out near 2,500, Anthropic near 1,600, Gemini 258 a tile)
IMAGE_TOKENS_BOUND = 2_500
IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})


def is_image(part: dict) -> bool:
    kind = part.get("type")
    return isinstance(kind, str) and kind in IMAGE_PARTS


def text_tokens(text: str) -> int:
    """The estimate for one text."""
    if text.isascii():
        return (len(text) + 3) // 4
    return (len(text) + 3) // 4 + len(text.encode("utf-8", "replace")) - len(text)


def content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return text_tokens(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if not isinstance(part, dict):
                continue
            if is_image(part):
                total += IMAGE_TOKENS
            else:
                text = part.get("text")
                total += text_tokens(text) if isinstance(text, str) else 0
        return total
    return 0


def prompt_tokens(body: dict) -> int:
    """Estimated input tokens of a chat, completions, embeddings, responses or messages request."""
    total = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                total += 4 + content_tokens(message.get("content"))
    for key in ("prompt", "input", "instructions", "system", "query"):
        value = body.get(key)
        if isinstance(value, str):
            total += text_tokens(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    total += text_tokens(item)
                elif isinstance(item, dict):
                    total += 4 + content_tokens(item.get("content", item.get("text", "")))
                elif isinstance(item, int):
                    total += 1  # a token id
                elif isinstance(item, list):
                    total += len(item)  # a list of token ids
    documents = body.get("documents")
    if isinstance(documents, list):
        total += sum(text_tokens(d) if isinstance(d, str) else content_tokens([d]) for d in documents)
    tools = body.get("tools")
    if tools:
        total += text_tokens(str(tools))
    return total


def prompt_tokens_bound(body: dict, raw_size: int) -> int:
    """At least the input tokens of any request whose JSON is `raw_size` bytes: those
    bytes, less the base64 of its images, plus IMAGE_TOKENS_BOUND an image."""
    images = 0
    image_bytes = 0
    for container in (body.get("messages"), body.get("input")):
        if not isinstance(container, list):
            continue
        for item in container:
            content = item.get("content") if isinstance(item, dict) else None
            if not isinstance(content, list):
                continue
            for part in content:
                if isinstance(part, dict) and is_image(part):
                    images += 1
                    image_bytes += _embedded_size(part)
    return max(0, raw_size - image_bytes) + images * IMAGE_TOKENS_BOUND


def _embedded_size(part: dict) -> int:
    """Bytes of the image data a content part carries inline (a data: URL or base64)."""
    for value in (part.get("image_url"), part.get("source")):
        if isinstance(value, dict):
            value = value.get("url") or value.get("data")
        if isinstance(value, str):
            return len(value)
    return 0


ANSWER_LIMIT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def answer_limit(body: dict) -> int | None:
    """The most answer tokens the request allows (chat, completions, Responses), if it says."""
    for name in ANSWER_LIMIT_FIELDS:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
