"""Token estimates for before the upstream has counted: about four characters a token,
which is what OpenAI's own guidance gives for English. Limits and budgets use these
only to reserve; what they record comes from the upstream's usage."""

from __future__ import annotations

from typing import Any

IMAGE_TOKENS = 765  # OpenAI's cost of one high-detail 512px tile set, a fair stand-in


def text_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return text_tokens(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") in ("image_url", "input_image", "image"):
                total += IMAGE_TOKENS
            else:
                total += text_tokens(str(part.get("text", "")))
        return total
    return 0


def prompt_tokens(body: dict) -> int:
    """Estimated input tokens of a chat, completions, embeddings, responses or messages request."""
    total = 0
    for message in body.get("messages") or ():
        if isinstance(message, dict):
            total += 4 + content_tokens(message.get("content"))
    for key in ("prompt", "input", "instructions", "system"):
        value = body.get(key)
        if isinstance(value, str):
            total += text_tokens(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    total += text_tokens(item)
                elif isinstance(item, dict):
                    total += 4 + content_tokens(item.get("content", item.get("text", "")))
    if body.get("tools"):
        total += text_tokens(str(body["tools"]))
    return total


ANSWER_LIMIT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def answer_limit(body: dict) -> int | None:
    """The most answer tokens the request allows (chat, completions, Responses), if it says."""
    for name in ANSWER_LIMIT_FIELDS:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
