"""List prices in USD, as the providers published them on PRICES_DATE: per million
tokens for chat and embeddings, and for the endpoints billed otherwise per search unit
(Cohere rerank), per million tokens of query and documents (Jina, Voyage), per image by
quality and size (DALL-E; gpt-image models as an estimate where the answer reports no
tokens), per audio minute (Whisper), per million characters (text to speech), and
audio and image tokens at their own rates (realtime, gpt-image, gpt-4o-transcribe).
A deployment's `price:` in gateway.yaml, or `prices:` in budget.yaml, overrides these.
Reasoning tokens are billed as output (they are counted in `completion_tokens`).
Matched by glob on the upstream model name, most specific first.

A usage (providers/usage.py) is OpenAI's token shape with the other units beside it:
`search_units`, `audio_seconds`, `characters`, `images` (with `image_quality`,
`image_size`); `cost` prices whatever it holds.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Any

from lockgate.providers.base import Price

PRICES_DATE = "2025-10-01"
# a batch's results (OpenAI's Batch API, Anthropic's Message Batches, Gemini's and Bedrock's
# batch inference) are billed at half the model's price by every provider that offers them;
# a `price:` with `batch_factor` says otherwise for its model
BATCH_FACTOR = 0.5

# gpt-image models: per image by quality and 1024x1024 or larger, as OpenAI lists them
GPT_IMAGE_1 = (("low/1024x1024", 0.011), ("low/*", 0.016), ("medium/1024x1024", 0.042), ("medium/*", 0.063), ("*/1024x1024", 0.167), ("*", 0.25))
GPT_IMAGE_1_MINI = (("low/1024x1024", 0.005), ("low/*", 0.006), ("medium/1024x1024", 0.011), ("medium/*", 0.015), ("*/1024x1024", 0.036), ("*", 0.052))
GPT_IMAGE_1_5 = (("low/1024x1024", 0.009), ("low/*", 0.013), ("medium/1024x1024", 0.034), ("medium/*", 0.05), ("*/1024x1024", 0.133), ("*", 0.2))
# quality `hd` or `standard`, size; the last entry of each catches any other
DALL_E_3 = (("hd/1024x1024", 0.08), ("hd/*", 0.12), ("*/1024x1024", 0.04), ("*", 0.08))
DALL_E_2 = (("*/256x256", 0.016), ("*/512x512", 0.018), ("*", 0.02))

# Models billed by something other than plain tokens, or by modality: checked before TABLE.
SPECIAL: tuple[tuple[str, Price], ...] = (
    # Cohere rerank: $2 per 1,000 searches (also on Bedrock as cohere.rerank-v3-5:0)
    ("rerank-v3.5*", Price(0, 0, per_search_unit=0.002)),
    ("rerank-v3-5*", Price(0, 0, per_search_unit=0.002)),
    ("rerank-english-v3*", Price(0, 0, per_search_unit=0.002)),
    ("rerank-multilingual-v3*", Price(0, 0, per_search_unit=0.002)),
    ("rerank-v4.0-fast*", Price(0, 0, per_search_unit=0.002)),
    ("rerank-v4.0-pro*", Price(0, 0, per_search_unit=0.0025)),
    ("rerank-v1*", Price(0, 0, per_search_unit=0.001)),  # amazon.rerank-v1:0
    # Jina and Voyage rerank: per million tokens of query and documents
    ("jina-reranker-*", Price(0.05, 0)),
    ("rerank-2.5-lite*", Price(0.02, 0)),
    ("rerank-2-lite*", Price(0.02, 0)),
    ("rerank-lite-*", Price(0.02, 0)),
    ("rerank-2*", Price(0.05, 0)),
    ("rerank-1*", Price(0.05, 0)),
    # images
    ("dall-e-3*", Price(0, 0, per_image=DALL_E_3)),
    ("dall-e-2*", Price(0, 0, per_image=DALL_E_2)),
    ("gpt-image-1-mini*", Price(2.0, 8.0, 0.2, image_input_per_mtok=2.5, image_output_per_mtok=8.0, per_image=GPT_IMAGE_1_MINI)),
    ("gpt-image-1.5*", Price(5.0, 10.0, 1.25, image_input_per_mtok=8.0, image_output_per_mtok=32.0, per_image=GPT_IMAGE_1_5)),
    ("gpt-image-1*", Price(5.0, 40.0, 1.25, image_input_per_mtok=10.0, image_output_per_mtok=40.0, per_image=GPT_IMAGE_1)),
    # speech to text: Whisper per minute; the gpt-4o models by token (the minute rate when
    # an answer reports only its duration)
    ("whisper*", Price(0, 0, per_audio_minute=0.006)),
    ("gpt-4o-mini-transcribe*", Price(1.25, 5.0, audio_input_per_mtok=3.0, per_audio_minute=0.003)),
    ("gpt-4o-transcribe*", Price(2.5, 10.0, audio_input_per_mtok=6.0, per_audio_minute=0.006)),
    # text to speech per million characters; gpt-4o-mini-tts is billed by audio tokens
    # (~$0.015 a minute), which its answer does not report: priced as tts-1
    ("tts-1-hd*", Price(0, 0, per_mchar=30.0)),
    ("tts-1*", Price(0, 0, per_mchar=15.0)),
    ("gpt-4o-mini-tts*", Price(0, 0, per_mchar=15.0)),
    # realtime: text and audio tokens apart
    ("gpt-4o-mini-realtime*", Price(0.60, 2.40, 0.30, audio_input_per_mtok=10.0, audio_output_per_mtok=20.0)),
    ("gpt-4o-realtime*", Price(5.0, 20.0, 2.50, audio_input_per_mtok=40.0, audio_output_per_mtok=80.0)),
    ("gpt-realtime-mini*", Price(0.60, 2.40, 0.06, audio_input_per_mtok=10.0, audio_output_per_mtok=20.0, image_input_per_mtok=0.80)),
    ("gpt-realtime*", Price(4.0, 16.0, 0.40, audio_input_per_mtok=32.0, audio_output_per_mtok=64.0, image_input_per_mtok=5.0)),
    # moderation is free
    ("omni-moderation*", Price(0, 0)),
    ("text-moderation*", Price(0, 0)),
)

# (glob, input, output, cached input, cache write)
TABLE: tuple[tuple[str, float, float, float | None, float | None], ...] = (
    # OpenAI
    ("gpt-4o-mini*", 0.15, 0.60, 0.075, None),
    ("gpt-4o*", 2.50, 10.00, 1.25, None),
    ("gpt-4.1-nano*", 0.10, 0.40, 0.025, None),
    ("gpt-4.1-mini*", 0.40, 1.60, 0.10, None),
    ("gpt-4.1*", 2.00, 8.00, 0.50, None),
    ("gpt-5-nano*", 0.05, 0.40, 0.005, None),
    ("gpt-5-mini*", 0.25, 2.00, 0.025, None),
    ("gpt-5*", 1.25, 10.00, 0.125, None),
    ("gpt-4-turbo*", 10.00, 30.00, None, None),
    ("gpt-4*", 30.00, 60.00, None, None),
    ("gpt-3.5-turbo*", 0.50, 1.50, None, None),
    ("o1-mini*", 1.10, 4.40, 0.55, None),
    ("o1*", 15.00, 60.00, 7.50, None),
    ("o3-mini*", 1.10, 4.40, 0.55, None),
    ("o3*", 2.00, 8.00, 0.50, None),
    ("o4-mini*", 1.10, 4.40, 0.275, None),
    ("text-embedding-3-small*", 0.02, 0.0, None, None),
    ("text-embedding-3-large*", 0.13, 0.0, None, None),
    ("text-embedding-ada-002*", 0.10, 0.0, None, None),
    # Anthropic
    ("claude-3-haiku*", 0.25, 1.25, 0.03, 0.30),
    ("claude-3-5-haiku*", 0.80, 4.00, 0.08, 1.00),
    ("claude-haiku-4*", 1.00, 5.00, 0.10, 1.25),
    ("claude-3-opus*", 15.00, 75.00, 1.50, 18.75),
    ("claude-opus-4-5*", 5.00, 25.00, 0.50, 6.25),
    ("claude-opus-4*", 15.00, 75.00, 1.50, 18.75),
    ("claude-3-5-sonnet*", 3.00, 15.00, 0.30, 3.75),
    ("claude-3-7-sonnet*", 3.00, 15.00, 0.30, 3.75),
    ("claude-sonnet-4*", 3.00, 15.00, 0.30, 3.75),
    # Google Gemini (prompts up to the first price tier)
    ("gemini-1.5-flash-8b*", 0.0375, 0.15, 0.01, None),
    ("gemini-1.5-flash*", 0.075, 0.30, 0.01875, None),
    ("gemini-1.5-pro*", 1.25, 5.00, 0.3125, None),
    ("gemini-2.0-flash-lite*", 0.075, 0.30, None, None),
    ("gemini-2.0-flash*", 0.10, 0.40, 0.025, None),
    ("gemini-2.5-flash-lite*", 0.10, 0.40, 0.025, None),
    ("gemini-2.5-flash*", 0.30, 2.50, 0.075, None),
    ("gemini-2.5-pro*", 1.25, 10.00, 0.31, None),
    ("text-embedding-004*", 0.0, 0.0, None, None),
    ("gemini-embedding-001*", 0.15, 0.0, None, None),
    # Vertex AI's text embeddings are priced per character: $0.000025 / 1k, about 4 a token
    ("text-embedding-005*", 0.10, 0.0, None, None),
    ("text-multilingual-embedding-002*", 0.10, 0.0, None, None),
    # Amazon on Bedrock (on-demand, us-east-1)
    ("nova-micro*", 0.035, 0.14, 0.00875, None),
    ("nova-lite*", 0.06, 0.24, 0.015, None),
    ("nova-pro*", 0.80, 3.20, 0.20, None),
    ("nova-premier*", 2.50, 12.50, 0.625, None),
    ("titan-embed-text-v2*", 0.02, 0.0, None, None),
    ("titan-embed-text-v1*", 0.10, 0.0, None, None),
    ("titan-text-express*", 0.20, 0.60, None, None),
    ("titan-text-lite*", 0.15, 0.20, None, None),
    # Meta Llama on Bedrock (ids like meta.llama3-1-70b-instruct-v1:0)
    ("llama3-1-8b-instruct*", 0.22, 0.22, None, None),
    ("llama3-1-70b-instruct*", 0.72, 0.72, None, None),
    ("llama3-1-405b-instruct*", 2.40, 2.40, None, None),
    ("llama3-3-70b-instruct*", 0.72, 0.72, None, None),
    # Cohere (also on Bedrock as cohere.*)
    ("command-r-plus*", 2.50, 10.00, None, None),
    ("command-r7b*", 0.0375, 0.15, None, None),
    ("command-r*", 0.15, 0.60, None, None),
    ("command-a*", 2.50, 10.00, None, None),
    ("command-light*", 0.30, 0.60, None, None),
    ("command*", 1.00, 2.00, None, None),
    ("embed-english-v3*", 0.10, 0.0, None, None),
    ("embed-multilingual-v3*", 0.10, 0.0, None, None),
    ("embed-english-light-v3*", 0.10, 0.0, None, None),
    ("embed-v4*", 0.12, 0.0, None, None),
    # Mistral
    ("mistral-large*", 2.00, 6.00, None, None),
    ("pixtral-large*", 2.00, 6.00, None, None),
    ("mistral-medium*", 0.40, 2.00, None, None),
    ("mistral-small*", 0.10, 0.30, None, None),
    ("codestral*", 0.30, 0.90, None, None),
    ("open-mistral-nemo*", 0.15, 0.15, None, None),
    ("ministral-8b*", 0.10, 0.10, None, None),
    ("ministral-3b*", 0.04, 0.04, None, None),
    ("mistral-embed*", 0.10, 0.0, None, None),
    # DeepSeek (cache hits priced as cached input)
    ("deepseek-chat*", 0.27, 1.10, 0.07, None),
    ("deepseek-reasoner*", 0.55, 2.19, 0.14, None),
    # xAI
    ("grok-4*", 3.00, 15.00, 0.75, None),
    ("grok-3-mini*", 0.30, 0.50, 0.075, None),
    ("grok-3*", 3.00, 15.00, 0.75, None),
    ("grok-2*", 2.00, 10.00, None, None),
    # Perplexity (tokens only; its per-request search fees are not counted)
    ("sonar-reasoning-pro*", 2.00, 8.00, None, None),
    ("sonar-reasoning*", 1.00, 5.00, None, None),
    ("sonar-pro*", 3.00, 15.00, None, None),
    ("sonar*", 1.00, 1.00, None, None),
    # Groq
    ("llama-3.1-8b-instant*", 0.05, 0.08, None, None),
    ("llama-3.3-70b-versatile*", 0.59, 0.79, None, None),
    ("llama-3.1-70b-versatile*", 0.59, 0.79, None, None),
    ("gemma2-9b-it*", 0.20, 0.20, None, None),
    ("mixtral-8x7b-32768*", 0.24, 0.24, None, None),
    # Together (meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo) and Fireworks (llama-v3p1-70b-instruct)
    ("*llama-3.1-8b-instruct-turbo*", 0.18, 0.18, None, None),
    ("*llama-3.1-70b-instruct-turbo*", 0.88, 0.88, None, None),
    ("*llama-3.3-70b-instruct-turbo*", 0.88, 0.88, None, None),
    ("*llama-3.1-405b-instruct-turbo*", 3.50, 3.50, None, None),
    ("llama-v3p1-8b-instruct*", 0.20, 0.20, None, None),
    ("llama-v3p1-70b-instruct*", 0.90, 0.90, None, None),
    ("llama-v3p3-70b-instruct*", 0.90, 0.90, None, None),
    ("llama-v3p1-405b-instruct*", 3.00, 3.00, None, None),
)

# Bedrock ids name the vendor first, and cross-region inference profiles a geography
# before that (us.anthropic.claude-...); the table is keyed by the model's own name.
BEDROCK_PREFIX = re.compile(r"^(?:(?:us|eu|apac|us-gov|global)\.)?(?:anthropic|amazon|meta|cohere|mistral|ai21|deepseek|writer|qwen|openai)\.")


def base_name(model: str) -> str:
    """The model's own name: no `provider/` path, no Bedrock vendor or geography prefix."""
    return BEDROCK_PREFIX.sub("", model.rsplit("/", 1)[-1].lower())


def lookup(model: str | None) -> Price | None:
    """The list price of an upstream model name (a `provider/` prefix is ignored)."""
    if not model:
        return None
    name = base_name(model)
    for pattern, price in SPECIAL:
        if fnmatchcase(name, pattern):
            return price
    for pattern, inp, out, cached, write in TABLE:
        if fnmatchcase(name, pattern):
            return Price(inp, out, cached, write)
    return None


def cost(usage: dict | None, price: Price) -> float:
    """USD for a usage: uncached input (text, audio, image), cached input, cache writes,
    output (text, audio, image), then the units that are not tokens."""
    if not usage:
        return 0.0
    prompt = _count(usage.get("prompt_tokens") or usage.get("input_tokens"))
    completion = _count(usage.get("completion_tokens") or usage.get("output_tokens"))
    details = usage.get("prompt_tokens_details") or {}
    out_details = usage.get("completion_tokens_details") or {}
    cached = _count(details.get("cached_tokens"))
    written = _count(details.get("cache_write_tokens"))
    # audio and image input counts include their cached share (realtime says how much)
    audio = max(0, _count(details.get("audio_tokens")) - _count(details.get("cached_audio_tokens")))
    image = max(0, _count(details.get("image_tokens")) - _count(details.get("cached_image_tokens")))
    text = max(0, prompt - cached - written - audio - image)
    audio_out = _count(out_details.get("audio_tokens"))
    image_out = _count(out_details.get("image_tokens"))
    text_out = max(0, completion - audio_out - image_out)
    total = text * price.input_per_mtok + text_out * price.output_per_mtok
    total += audio * _or(price.audio_input_per_mtok, price.input_per_mtok) + image * _or(price.image_input_per_mtok, price.input_per_mtok)
    total += audio_out * _or(price.audio_output_per_mtok, price.output_per_mtok) + image_out * _or(price.image_output_per_mtok, price.output_per_mtok)
    total += cached * _or(price.cached_input_per_mtok, price.input_per_mtok)
    total += written * _or(price.cache_write_per_mtok, price.input_per_mtok)
    total = total / 1_000_000 + unit_cost(usage, price)
    return total * _or(price.batch_factor, BATCH_FACTOR) if usage.get("batch") else total


def unit_cost(usage: dict, price: Price) -> float:
    total = _count(usage.get("search_units")) * (price.per_search_unit or 0.0)
    total += _count(usage.get("audio_seconds")) / 60 * (price.per_audio_minute or 0.0)
    total += _count(usage.get("characters")) / 1_000_000 * (price.per_mchar or 0.0)
    images = _count(usage.get("images"))
    if images and price.per_image:
        total += images * image_price(price, usage.get("image_quality"), usage.get("image_size"))
    return total


def image_price(price: Price, quality: Any, size: Any) -> float:
    """One image's price; an unknown quality (`auto`, or none said) at the dearest one for its size."""
    size = size if isinstance(size, str) and size != "auto" else "1024x1024"
    if isinstance(quality, str) and quality not in ("auto", ""):
        return next((usd for glob, usd in price.per_image if fnmatchcase(f"{quality}/{size}", glob)), 0.0)
    qualities = {glob.split("/", 1)[0] for glob, _ in price.per_image if "/" in glob} | {"*"}
    return max(next((usd for glob, usd in price.per_image if fnmatchcase(f"{q}/{size}", glob)), 0.0) for q in qualities)


def _count(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 0.0


def _or(rate: float | None, default: float) -> float:
    return rate if rate is not None else default


PRICE_KEYS = (
    "input_per_mtok", "output_per_mtok", "cached_input_per_mtok", "cache_write_per_mtok", "audio_input_per_mtok",
    "audio_output_per_mtok", "image_input_per_mtok", "image_output_per_mtok", "per_search_unit", "per_audio_minute", "per_mchar",
    "batch_factor",
)


def parse_price(check: Any, node: Any, where: str = "price") -> Price | None:
    """A `price:` (gateway.yaml) or `prices:` entry (budget.yaml); problems go to `check`
    (proxy.config.Checker). `per_image` maps "quality/size" globs to USD an image."""
    if not isinstance(node, dict):
        return None
    check.unknown(node, {*PRICE_KEYS, "per_image"}, where)
    optional = {key: float(check.number(node, key, 0.0)) for key in PRICE_KEYS[2:] if key in node}
    per_image = check.mapping(node, "per_image", "per_image") if "per_image" in node else {}
    images = tuple((str(glob), float(check.number(per_image, glob, 0.0))) for glob in per_image)
    return Price(float(check.number(node, "input_per_mtok", 0.0)), float(check.number(node, "output_per_mtok", 0.0)), per_image=images, **optional)
