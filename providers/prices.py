"""List prices in USD per million tokens, as the providers published them on
PRICES_DATE. A deployment's `price:` in gateway.yaml, or `prices:` in budget.yaml,
overrides these. Reasoning tokens are billed as output (they are counted in
`completion_tokens`). Matched by glob on the upstream model name, most specific first.
"""

from __future__ import annotations

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
)


def lookup(model: str | None) -> Price | None:
    """The list price of an upstream model name (a `provider/` prefix is ignored)."""
    if not model:
        return None
    name = model.rsplit("/", 1)[-1].lower()
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
