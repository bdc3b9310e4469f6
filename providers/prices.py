"""List prices in USD per million tokens, as the providers published them on
PRICES_DATE. A deployment's `price:` in gateway.yaml, or `prices:` in budget.yaml,
overrides these. Reasoning tokens are billed as output (they are counted in
`completion_tokens`). Matched by glob on the upstream model name, most specific first.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase

from lockgate.providers.base import Price

PRICES_DATE = "2025-10-01"

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
    for pattern, inp, out, cached, write in TABLE:
        if fnmatchcase(name, pattern):
            return Price(inp, out, cached, write)
    return None


def cost(usage: dict | None, price: Price) -> float:
    """USD for OpenAI-shaped `usage`: uncached input, cached input, cache writes, output."""
    if not usage:
        return 0.0
    prompt = usage.get("prompt_tokens") or usage.get("input_tokens") or 0
    completion = usage.get("completion_tokens") or usage.get("output_tokens") or 0
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") or 0
    written = details.get("cache_write_tokens") or 0
    uncached = max(0, prompt - cached - written)
    total = uncached * price.input_per_mtok + completion * price.output_per_mtok
    total += cached * (price.cached_input_per_mtok if price.cached_input_per_mtok is not None else price.input_per_mtok)
    total += written * (price.cache_write_per_mtok if price.cache_write_per_mtok is not None else price.input_per_mtok)
    return total / 1_000_000
