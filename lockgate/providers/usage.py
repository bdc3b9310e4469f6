"""The readers of usage, and the bounds and estimates of the endpoints billed by units
other than tokens (each endpoint kind in providers/endpoints.py names its own).
providers/meter.py applies them to an answer's bytes as they pass: what a middleware
mounted around an app that is not lockgate's proxy (a FastAPI route calling a model, a
vLLM server, another proxy) charges and counts. lockgate's own proxy records usage in
the request context; this is for when nothing did.

What is read, in OpenAI's usage shape (`prompt_tokens`, `completion_tokens`, details):
- a JSON answer's `usage`: chat, completions, embeddings as they are; an Anthropic
  message's and a Response's `input_tokens` / `output_tokens` converted;
- an OpenAI SSE stream's usage chunk (sent when the client asked for
  `stream_options.include_usage`);
- Anthropic's `message_start` and `message_delta` events (input, cache reads and
  writes, then the cumulative output);
- the Responses API's `response.completed` / `response.incomplete` event;
- for the endpoints billed by other units (each endpoint kind's `usage`): a rerank
  answer's Cohere `meta.billed_units` (search units, tokens) or Jina's / Voyage's /
  vLLM's `usage.total_tokens`; an images answer's token usage (gpt-image models), else
  its images by quality and size; a transcription's token usage, its duration
  (`usage.seconds`, verbose_json's `duration`), or its text streamed
  (`transcript.text.done`); speech by the characters of its input (its answer is audio).
The text streamed is counted as it passes too, so an answer that carries no usage can
still be estimated (`estimate`) instead of charged nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from lockgate.providers import shapes
from lockgate.providers.anthropic import merge_usage, usage_from_openai, usage_to_openai
from lockgate.providers.responses import TERMINAL_EVENTS, usage_to_chat
from lockgate.providers.tokens import prompt_tokens

SPEECH_CHARS_PER_SECOND = 15  # ~150 words a minute: a transcript's length says about how long the audio was


def from_answer(data: Any) -> dict | None:
    """OpenAI-shaped usage of a whole (non-streamed) answer, if it says."""
    if not isinstance(data, dict):
        return None
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return None
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        return usage if _counts_are_numbers(usage) else None
    if data.get("object") == "response":
        return usage_to_chat(usage)
    if "input_tokens" in usage or "output_tokens" in usage:
        return usage_to_openai(usage)
    return None


def _counts_are_numbers(usage: dict) -> bool:
    return all(isinstance(usage.get(k, 0), (int, float)) and not isinstance(usage.get(k, 0), bool) for k in ("prompt_tokens", "completion_tokens"))


def delta_chars(event: Any) -> int:
    """Characters of generated text in one stream event (OpenAI chunk, Anthropic or
    Responses event); anything malformed counts nothing."""
    if not isinstance(event, dict):
        return 0
    total = 0
    choices = event.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            total += _text_len(delta.get("content"))
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    function = call.get("function") if isinstance(call, dict) else None
                    if isinstance(function, dict):
                        total += _text_len(function.get("arguments"))
    delta = event.get("delta")
    if isinstance(delta, str):
        total += len(delta)
    elif isinstance(delta, dict):
        total += _text_len(delta.get("text")) + _text_len(delta.get("partial_json")) + _text_len(delta.get("thinking"))
    return total


def _text_len(value: Any) -> int:
    return len(value) if isinstance(value, str) else 0


def stream_usage(event: str, data: Any, usage: dict | None) -> dict | None:
    """Usage so far, updated by one stream event of any of the formats above."""
    if not isinstance(data, dict):
        return usage
    kind = data.get("type") or event
    if kind == "message_start":
        message = data.get("message")
        found = message.get("usage") if isinstance(message, dict) else None
        return usage_to_openai(found) if isinstance(found, dict) else usage
    if kind == "message_delta":
        update = data.get("usage")
        return usage_to_openai(merge_usage(usage_from_openai(usage), update)) if isinstance(update, dict) else usage
    if kind in TERMINAL_EVENTS:
        response = data.get("response")
        found = response.get("usage") if isinstance(response, dict) else None
        return (usage_to_chat(found) if isinstance(found, dict) else None) or usage
    if kind == "transcript.text.done":
        return transcription_usage(data) or usage
    found = data.get("usage")
    if isinstance(found, dict) and ("prompt_tokens" in found or "completion_tokens" in found) and _counts_are_numbers(found):
        return found
    return usage


# -- the endpoints billed by other units (providers/endpoints.py names each kind's) -------------
def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 2**53 else None


def rerank_usage(data: dict) -> dict | None:
    """Cohere's `meta.billed_units` (search units, or input tokens), or the `usage` of
    Jina, Voyage and vLLM (`total_tokens`, `prompt_tokens`)."""
    meta = data.get("meta")
    billed = meta.get("billed_units") if isinstance(meta, dict) else None
    billed = billed if isinstance(billed, dict) else {}
    usage = shapes.part(data.get("usage"))
    units = _number(billed.get("search_units"))
    tokens = _number(billed.get("input_tokens")) or _number(usage.get("total_tokens")) or _number(usage.get("prompt_tokens"))
    if units is None and tokens is None:
        return None
    out: dict[str, Any] = {"prompt_tokens": int(tokens or 0), "completion_tokens": 0, "total_tokens": int(tokens or 0)}
    if units is not None:
        out["search_units"] = units
    return out


def images_usage(data: dict, request: dict) -> dict | None:
    """gpt-image models report tokens (text and image input, image output); DALL-E
    reports nothing, so its images are counted with the quality and size asked for."""
    usage = data.get("usage")
    if isinstance(usage, dict) and _number(usage.get("input_tokens")) is not None:
        prompt, completion = int(_number(usage.get("input_tokens")) or 0), int(_number(usage.get("output_tokens")) or 0)
        given = shapes.part(usage.get("input_tokens_details"))
        made = shapes.part(usage.get("output_tokens_details"))
        out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        out["prompt_tokens_details"] = {"image_tokens": int(_number(given.get("image_tokens")) or 0)}
        # without output details every output token is an image token (gpt-image-1)
        out["completion_tokens_details"] = {"image_tokens": int(_number(made.get("image_tokens")) or 0) if made else completion}
        return out
    images = data.get("data")
    count = len(images) if isinstance(images, list) else None
    if count is None:
        return None
    quality = data.get("quality") or request.get("quality") or "standard"
    return {"images": count, "image_quality": str(quality), "image_size": str(data.get("size") or request.get("size") or "1024x1024")}


def transcription_usage(data: dict) -> dict | None:
    """`usage` of type tokens (gpt-4o-transcribe) or duration (whisper-1), or a
    verbose_json answer's `duration`."""
    usage = data.get("usage")
    if isinstance(usage, dict):
        if usage.get("type") == "duration" and _number(usage.get("seconds")) is not None:
            return {"audio_seconds": usage["seconds"]}
        if _number(usage.get("input_tokens")) is not None:
            prompt, completion = int(_number(usage.get("input_tokens")) or 0), int(_number(usage.get("output_tokens")) or 0)
            details = shapes.part(usage.get("input_token_details"))
            out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
            out["prompt_tokens_details"] = {"audio_tokens": int(_number(details.get("audio_tokens")) or 0)}
            return out
    duration = _number(data.get("duration"))
    return {"audio_seconds": duration} if duration is not None else None


def speech_usage(request: dict) -> dict:
    text = request.get("input")
    return {"characters": len(text) if isinstance(text, str) else 0}


def realtime_usage(usage: Any) -> dict | None:
    """A realtime `response.done`'s usage: text, audio and image tokens apart, and how
    many of each were read from the session's cache."""
    if not isinstance(usage, dict) or _number(usage.get("input_tokens")) is None:
        return None
    given = shapes.part(usage.get("input_token_details"))
    cached = shapes.part(given.get("cached_tokens_details"))
    made = shapes.part(usage.get("output_token_details"))
    prompt, completion = int(_number(usage.get("input_tokens")) or 0), int(_number(usage.get("output_tokens")) or 0)
    details = {
        "cached_tokens": int(_number(given.get("cached_tokens")) or 0),
        "audio_tokens": int(_number(given.get("audio_tokens")) or 0),
        "image_tokens": int(_number(given.get("image_tokens")) or 0),
        "cached_audio_tokens": int(_number(cached.get("audio_tokens")) or 0),
        "cached_image_tokens": int(_number(cached.get("image_tokens")) or 0),
    }
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    out["prompt_tokens_details"] = {k: v for k, v in details.items() if v}
    out["completion_tokens_details"] = {"audio_tokens": int(_number(made.get("audio_tokens")) or 0)}
    return out


TRANSCRIPT_DONE = "conversation.item.input_audio_transcription.completed"


def billed_usage(text: str, transcription: bool) -> dict | None:
    """The usage a realtime upstream event bills: a `response.done`'s, or in a transcription
    session a completed transcript's; None for every other event."""
    if '"response.done"' not in text and (not transcription or TRANSCRIPT_DONE not in text):
        return None
    try:
        event = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    if event.get("type") == "response.done" and isinstance(event.get("response"), dict):
        return realtime_usage(event["response"].get("usage"))
    if transcription and event.get("type") == TRANSCRIPT_DONE:
        return transcription_usage(event)
    return None


def add_usage(total: dict | None, more: dict | None) -> dict | None:
    """Two usages summed (a realtime session's responses), nested details included."""
    if not more:
        return total
    if not total:
        return dict(more)
    out = dict(total)
    for key, value in more.items():
        if isinstance(value, dict):
            out[key] = add_usage(out.get(key) if isinstance(out.get(key), dict) else None, value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = (out.get(key) or 0) + value
    return out


# What a request of each kind can cost at most, before the upstream counted, in the shape
# providers/prices.py prices. Audio length is not in an upload's headers: the bound takes
# the least bytes a second any speech codec in use sends (6 kbit/s, Opus's floor for
# speech), and for token-billed models generous rates of audio and transcript tokens a second.
MIN_AUDIO_BYTES_PER_SECOND = 750
AUDIO_TOKENS_PER_SECOND_BOUND = 20
TRANSCRIPT_TOKENS_PER_SECOND_BOUND = 10
IMAGE_INPUT_TOKENS_BOUND = 6_500  # the most image tokens gpt-image models bill an input image (high fidelity)


Files = Sequence[tuple[str, int]]  # an upload's files, as (field name, bytes)


def rerank_bound(request: dict, size: int, files: Files) -> dict:
    documents = shapes.listed(request.get("documents"))
    # Cohere splits a query and document past 500 tokens into chunks, each a document; 100 a unit
    query = len(str(request.get("query") or "").encode())
    chunks = sum(max(1, -(-(query + len(str(doc).encode())) // 500)) for doc in documents) or 1
    return {"prompt_tokens": size, "completion_tokens": 0, "search_units": -(-chunks // 100)}


def images_bound(request: dict, size: int, files: Files) -> dict:
    count = images_asked(request)
    inputs = sum(1 for name, _ in files if name.startswith("image"))
    prompt = len(str(request.get("prompt") or "").encode())
    out = {"prompt_tokens": prompt + inputs * IMAGE_INPUT_TOKENS_BOUND, "prompt_tokens_details": {"image_tokens": inputs * IMAGE_INPUT_TOKENS_BOUND}}
    return {**out, "completion_tokens": 0, "images": count, "image_quality": request.get("quality"), "image_size": request.get("size")}


def audio_bound(request: dict, size: int, files: Files) -> dict:
    audio = sum(nbytes for _, nbytes in files)
    seconds = -(-audio // MIN_AUDIO_BYTES_PER_SECOND)
    prompt = seconds * AUDIO_TOKENS_PER_SECOND_BOUND + len(str(request.get("prompt") or "").encode())
    details = {"audio_tokens": seconds * AUDIO_TOKENS_PER_SECOND_BOUND}
    return {"audio_seconds": seconds, "prompt_tokens": prompt, "prompt_tokens_details": details,
            "completion_tokens": seconds * TRANSCRIPT_TOKENS_PER_SECOND_BOUND}


def speech_bound(request: dict, size: int, files: Files) -> dict:
    return speech_usage(request)


def images_asked(request: dict) -> int:
    n = request.get("n")
    return int(n) if isinstance(n, (int, str)) and str(n).isdigit() and int(n) > 0 else 1


# Units billed for an answer that said nothing, from its request and the characters of
# text it held (a transcript's length in seconds of speech).
def rerank_estimate(request: dict, chars: int) -> dict:
    documents = request.get("documents")
    count = len(documents) if isinstance(documents, list) else 0
    tokens = prompt_tokens(request)
    return {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens, "search_units": max(1, -(-count // 100)), "estimated": True}


def images_estimate(request: dict, chars: int) -> dict:
    return {"images": images_asked(request), "image_quality": str(request.get("quality") or "standard"), "image_size": str(request.get("size") or "1024x1024"),
            "estimated": True}


def audio_estimate(request: dict, chars: int) -> dict:
    return {"audio_seconds": -(-chars // SPEECH_CHARS_PER_SECOND), "estimated": True}


def speech_estimate(request: dict, chars: int) -> dict:
    return speech_usage(request)
