"""The guard's work on text: which rules apply, what they find, and what is done with it
(block, mask, tokenize, log), on whole strings, on JSON bodies walked string by string,
and on streams fed a piece at a time (`Channel`). Pure: no I/O, no ASGI; the middleware
(middleware/guard.py) decides where the text comes from and where it goes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from lockgate.middleware.guard_detectors import AnyDetector, Text, scan

ACTIONS = ("block", "tokenize", "mask", "log")  # strongest first: where rules find the same text, the strongest acts
DIRECTIONS = ("input", "output", "both")
# keys whose values are no one's words: the request's and the answer's structure, ids,
# encoded media and opaque blobs a provider checks (a thinking block's signature), tool
# definitions, and `user` (the caller's id, which auth, throttle and budget read)
SKIPPED_KEYS = frozenset(
    {
        "model", "role", "type", "id", "object", "tool_call_id", "call_id", "item_id", "previous_response_id", "response_id",
        "name", "user", "safety_identifier", "prompt_cache_key", "tools", "functions", "tool_choice", "response_format",
        "parameters", "input_schema", "signature", "encrypted_content", "b64_json", "url", "image_url", "file_data",
        "file_id", "file_url", "input_audio", "audio", "voice", "modalities", "stream_options", "reasoning", "encoding_format",
        "embedding", "logprobs", "top_logprobs", "usage", "finish_reason", "stop_reason", "system_fingerprint", "status",
        "media_type", "cache_control", "service_tier", "created", "created_at", "index", "sequence_number", "stream", "format",
        "quality", "size", "style", "background", "language", "temperature", "timestamp_granularities", "include",
    }
)
BLOB_KEYS = frozenset({"data"})  # base64 media when a string (input_audio, an image source); a list of results otherwise
TOKEN = re.compile(r"<([A-Z][A-Z0-9_]{0,40})_([0-9]{1,6})>")
TOKEN_PREFIX = re.compile(r"<[A-Z0-9_]{0,48}\Z")  # the start of a placeholder the next piece may finish
MAX_TOKEN_LEN = 50
MAX_HOLD = 16384  # a stream never holds more than this of one text, whatever a pattern may still need


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    action: str  # block | tokenize | mask | log
    direction: str  # input | output | both
    match: dict[str, Any]  # identity and model globs, as other policies' `match:`
    detectors: tuple[AnyDetector, ...] = ()
    label: str | None = None  # a custom rule's placeholder name (default: the rule's name)
    moderation: Any = None  # guard.Moderation
    webhook: Any = None  # guard.Webhook

    @property
    def inbound(self) -> bool:
        return self.direction in ("input", "both")

    @property
    def outbound(self) -> bool:
        return self.direction in ("output", "both")


class Blocked(Exception):
    def __init__(self, rule: Rule, direction: str) -> None:
        super().__init__(rule.name)
        self.rule = rule
        self.direction = direction


class DetectorFailed(Exception):
    """A detector raised: the rule it served is named, never the text it was reading."""

    def __init__(self, rule: Rule, kind: str) -> None:
        super().__init__(rule.name)
        self.rule = rule
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Plan:
    """The detecting rules that apply to one direction of one request, strongest action first."""

    entries: tuple[tuple[AnyDetector, Rule], ...]
    holdback: int  # the longest match any of them makes: what a stream holds back
    blocking: int = 0  # the first entries are block rules': one of their findings blocks, whatever overlaps it

    @staticmethod
    def of(rules: list[Rule]) -> Plan:
        ranked = sorted((r for r in rules if r.detectors), key=lambda r: ACTIONS.index(r.action))
        entries = tuple((detector, rule) for rule in ranked for detector in rule.detectors)
        blocking = sum(1 for _, rule in entries if rule.action == "block")
        return Plan(entries, max((d.max_len for d, _ in entries), default=0), blocking)


@dataclass(frozen=True, slots=True)
class Finding:
    start: int
    end: int
    rule: Rule
    label: str


def find(text: str, plan: Plan) -> list[Finding]:
    """Every finding of the plan's rules in `text`, overlaps resolved (the earliest, then
    the longest, then the strongest rule's)."""
    try:
        spans = scan(text, (detector for detector, _ in plan.entries), plan.blocking)
    except Exception as exc:  # noqa: BLE001 - a detector's bug fails its rule (closed or open), and no text is kept
        raise DetectorFailed(_rule_of_failure(plan, text), type(exc).__name__) from None
    if not spans:
        return []
    rules = {id(detector): rule for detector, rule in reversed(plan.entries)}
    return [Finding(start, end, rules[id(detector)], rules[id(detector)].label or detector.label) for start, end, detector in spans]


def _rule_of_failure(plan: Plan, text: str) -> Rule:
    for detector, rule in plan.entries:
        try:
            list(detector.find(Text(text)))
        except Exception:  # noqa: BLE001 - this is the one that fails
            return rule
    return plan.entries[0][1]


@dataclass
class Vault:
    """One request's placeholders: originals to `<LABEL_n>` and back. Lives in memory for
    the request only; only the tokens made of the request's own text are restored."""

    by_value: dict[tuple[str, str], str] = field(default_factory=dict)
    originals: dict[str, str] = field(default_factory=dict)  # restorable token -> original
    counts: dict[str, int] = field(default_factory=dict)

    def token(self, label: str, value: str, restorable: bool) -> str:
        known = self.by_value.get((label, value))
        if known is not None:
            return known
        number = self.counts[label] = self.counts.get(label, 0) + 1
        token = f"<{label}_{number}>"
        self.by_value[(label, value)] = token
        if restorable:
            self.originals[token] = value
        return token

    def restore(self, text: str, json_escaped: bool = False) -> str:
        if not self.originals or "<" not in text:
            return text

        def original(match: re.Match[str]) -> str:
            value = self.originals.get(match.group(0))
            if value is None:
                return match.group(0)
            return orjson.dumps(value).decode()[1:-1] if json_escaped else value

        return TOKEN.sub(original, text)


LABEL = re.compile(r"[^A-Z0-9]+")


def label_of(name: str) -> str:
    return LABEL.sub("_", name.upper()).strip("_") or "REDACTED"


@dataclass
class Tally:
    """What one request's guard found: (rule, action, direction) -> count. Never any text."""

    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def add(self, rule: Rule, direction: str, n: int = 1) -> None:
        key = (rule.name, rule.action, direction)
        self.counts[key] = self.counts.get(key, 0) + n


def apply(text: str, findings: list[Finding], vault: Vault, direction: str, tally: Tally, upto: int | None = None) -> str:
    """`text` with what the findings' rules do done (those that start before `upto`);
    raises Blocked for the first blocking finding."""
    out: list[str] = []
    at = 0
    for finding in findings:
        if upto is not None and finding.start >= upto:
            break
        rule = finding.rule
        tally.add(rule, direction)
        if rule.action == "block":
            raise Blocked(rule, direction)
        if rule.action == "log":
            continue
        out.append(text[at : finding.start])
        if rule.action == "mask":
            out.append(f"[{finding.label}]")
        else:
            out.append(vault.token(finding.label, text[finding.start : finding.end], direction == "input"))
        at = finding.end
    if not out:
        return text if upto is None else text[:upto]
    out.append(text[at:upto])
    return "".join(out)


def guard_text(text: str, plan: Plan, vault: Vault, direction: str, tally: Tally) -> str:
    """One whole string: the plan's rules acted on it."""
    if not plan.entries or not text:
        return text
    findings = find(text, plan)
    return apply(text, findings, vault, direction, tally) if findings else text


def walk(value: Any, change: Callable[[str, str], str]) -> Any:
    """`value` (a JSON body) with `change(key, text)` applied to every string that is
    someone's words (not under SKIPPED_KEYS); changed containers are copied, not edited."""
    if isinstance(value, str):
        return change("", value)
    if isinstance(value, dict):
        changed: dict[str, Any] | None = None
        for key, item in value.items():
            if key in SKIPPED_KEYS or not isinstance(item, (str, dict, list)):
                continue
            if isinstance(item, str) and key in BLOB_KEYS:
                continue
            new = change(key, item) if isinstance(item, str) else walk(item, change)
            if new is not item:
                if changed is None:
                    changed = dict(value)
                changed[key] = new
        return value if changed is None else changed
    if isinstance(value, list):
        items: list[Any] | None = None
        for i, item in enumerate(value):
            if not isinstance(item, (str, dict, list)):
                continue
            new = change("", item) if isinstance(item, str) else walk(item, change)
            if new is not item:
                if items is None:
                    items = list(value)
                items[i] = new
        return value if items is None else items
    return value


def strings(value: Any) -> Iterator[str]:
    """The strings `walk` would look at, in order."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in SKIPPED_KEYS and not (key in BLOB_KEYS and isinstance(item, str)):
                yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


class Channel:
    """One text of a streamed answer (a choice's content, a tool call's arguments, a
    content block), guarded as it comes: fed the upstream's pieces, it gives back what
    may go to the client now. It holds back the last `plan.holdback` characters (a
    finding may still start there), and a finding that reaches the held part from
    before it, and a placeholder's unfinished start; never more than MAX_HOLD."""

    __slots__ = ("plan", "vault", "tally", "json_escaped", "pending", "template")

    def __init__(self, plan: Plan, vault: Vault, tally: Tally, json_escaped: bool) -> None:
        self.plan = plan
        self.vault = vault
        self.tally = tally
        self.json_escaped = json_escaped
        self.pending = ""
        self.template: Any = None  # the event this text's last piece came in: a flush is made like it

    def feed(self, piece: str) -> str:
        text = self.pending + piece if self.pending else piece
        findings = find(text, self.plan) if self.plan.entries else []
        cut = max(len(text) - self.plan.holdback, 0)
        for finding in findings:
            if finding.rule.action == "block":
                self.tally.add(finding.rule, "output")
                raise Blocked(finding.rule, "output")
            if finding.end >= len(text) or finding.start < cut < finding.end:
                cut = min(cut, finding.start)
        if self.vault.originals:
            opened = text.rfind("<", max(cut - MAX_TOKEN_LEN, 0), cut)
            if opened >= 0 and TOKEN_PREFIX.match(text, opened, cut):
                cut = opened
        if len(text) - cut > MAX_HOLD:
            cut = len(text) - MAX_HOLD
        if cut <= 0:
            self.pending = text
            return ""
        self.pending = text[cut:]
        released = apply(text, findings, self.vault, "output", self.tally, cut) if findings else text[:cut]
        return self.vault.restore(released, self.json_escaped)

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        if not text:
            return ""
        return self.vault.restore(guard_text(text, self.plan, self.vault, "output", self.tally), self.json_escaped)
