"""Reading the JSON a translator is given, one shape at a time. A request's top-level
fields have passed its endpoint's checks (providers/validation.py), but what is nested
in them, and whatever an upstream answers, can hold any JSON value. Each reader returns
the value when it has the shape the translator needs, else raises `TranslationError`
naming where it was: bad input is then a deliberate 400 (or, in an upstream's answer, a
502), and any other exception out of a translator a bug.

Absent is read as empty, as `value or {}` would: None, "", 0, false, [] and {} give an
empty object (or list, or string); any other value of the wrong type is refused.
"""

from __future__ import annotations

from typing import Any

from lockgate.providers.base import TranslationError


def mapping(value: Any, where: str) -> dict:
    """An object (a JSON object), or {} when absent."""
    if isinstance(value, dict):
        return value
    if not value:
        return {}
    raise TranslationError(f"`{where}` must be an object.", where)


def array(value: Any, where: str) -> list:
    """A list (a JSON array), or [] when absent."""
    if isinstance(value, list):
        return value
    if not value:
        return []
    raise TranslationError(f"`{where}` must be an array.", where)


def objects(value: Any, where: str) -> list[dict]:
    """A list of objects, or [] when absent."""
    items = array(value, where)
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise TranslationError(f"`{where}[{i}]` must be an object.", f"{where}[{i}]")
    return items


def string(value: Any, where: str) -> str:
    """A string, or "" when absent."""
    if isinstance(value, str):
        return value
    if not value:
        return ""
    raise TranslationError(f"`{where}` must be a string.", where)


def name(value: Any, where: str) -> str:
    """A string that must be there (an id, a function's name)."""
    if isinstance(value, str) and value:
        return value
    raise TranslationError(f"`{where}` must be a non-empty string.", where)


def number(value: Any, where: str) -> int | float:
    """A count or other number, or 0 when absent."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if not value:
        return 0
    raise TranslationError(f"`{where}` must be a number.", where)


MAX_COUNT = 2**53  # past this a count is not one (and an integer made of it leaves JSON's range)


def count(value: Any) -> int | float:
    """A token count as an upstream reported it, 0 for anything that is not a count:
    usage is read off answers that are passed on whatever their shape, so reading it
    never fails."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < MAX_COUNT else 0


def part(value: Any) -> dict:
    """An object read leniently, as usage is: {} for anything else."""
    return value if isinstance(value, dict) else {}


def listed(value: Any) -> list:
    """A list read leniently: [] for anything else."""
    return value if isinstance(value, list) else []


def first_choice(chat: dict) -> tuple[dict, dict]:
    """A `chat.completion`'s first choice and its message ({} for none)."""
    choices = objects(chat.get("choices"), "choices")
    choice = choices[0] if choices else {}
    return choice, mapping(choice.get("message"), "choices[0].message")
