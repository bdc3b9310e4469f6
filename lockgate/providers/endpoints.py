"""The model endpoints lockgate serves, by kind: which path is which, how its body
comes (JSON or multipart/form-data), and what it is billed by.

A path names its kind with or without `/v1`; an app mounted under another prefix, or a
middleware's own `paths:` (`/my-app/llm/v1/rerank`), is matched by the path's end, so
the middlewares around an app that is not lockgate's still know a rerank from a chat.
"""

from __future__ import annotations

KINDS: dict[str, str] = {
    "/chat/completions": "chat",
    "/completions": "completions",
    "/embeddings": "embeddings",
    "/responses": "responses",
    "/messages": "messages",
    "/messages/count_tokens": "count_tokens",
    "/rerank": "rerank",
    "/v2/rerank": "rerank",
    "/images/generations": "image_generation",
    "/images/edits": "image_edit",
    "/images/variations": "image_variation",
    "/audio/transcriptions": "transcription",
    "/audio/translations": "translation",
    "/audio/speech": "speech",
    "/moderations": "moderation",
    "/realtime": "realtime",
}
# the longest suffix first, so /messages/count_tokens is not taken for /messages
SUFFIXES = tuple(sorted(KINDS, key=len, reverse=True))

MULTIPART = frozenset({"image_edit", "image_variation", "transcription", "translation"})
IMAGES = frozenset({"image_generation", "image_edit", "image_variation"})
AUDIO_IN = frozenset({"transcription", "translation"})
# answered without a cost: lockgate's own count, or an upstream that does not bill them
FREE = frozenset({"count_tokens", "moderation"})


def kind_of(path: str) -> str | None:
    """The endpoint kind of a request path (as the app's routes see it), or None."""
    if path.startswith("/v1/"):
        path = path[3:]
    kind = KINDS.get(path)
    if kind is not None:
        return kind
    for suffix in SUFFIXES:
        if path.endswith(suffix):
            return KINDS[suffix]
    return None
