"""The guard's built-in detectors: pure functions from text to the spans they find.

Each detector is a regular expression for candidates, a cheap pre-check that skips the
expression on text that cannot hold a match (an `@` for an email, a digit for a card
number) and, where the format has one, a validation of each candidate by a well-kept
library: Luhn for card numbers (python-stdnum), the ISO 13616 checksum and each
country's BBAN layout for IBANs (python-stdnum), Google's libphonenumber metadata for
phone numbers (phonenumbers), `ipaddress` for IP addresses. Every expression is linear
in the text (no nested quantifiers over the same characters), and each match is at most
`max_len` characters, so a stream needs to hold back no more than the longest
(`holdback`).

What each finds and misses is in README "Guard" (the detectors table); the labeled
corpus in tests/data/guard/ measures it (tests/test_guard_corpus.py).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn

Validate = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class Detector:
    name: str  # what a rule's `detect:` names
    label: str  # the placeholder's name: [EMAIL], <EMAIL_1>
    pattern: re.Pattern[str]
    validate: Validate | None = None  # a candidate is a finding only when this says so
    hints: tuple[str, ...] = ()  # the text must hold one of these for the pattern to run (none: always runs)
    max_len: int = 64  # the longest match: what a stream holds back for it
    group: str | None = None  # the named group that is the finding (the rest is context), else the whole match
    digits: bool = False  # the text must hold a digit

    def find(self, text: str) -> Iterable[tuple[int, int]]:
        if self.digits and not _has_digit(text):
            return ()
        if self.hints and not any(hint in text for hint in self.hints):
            return ()
        return self._matches(text)

    def _matches(self, text: str) -> Iterable[tuple[int, int]]:
        for match in self.pattern.finditer(text):
            start, end = match.span(self.group) if self.group else match.span()
            if start < 0:
                continue
            if self.validate is None or self.validate(text[start:end]):
                yield start, end


_DIGIT = re.compile(r"\d")


def _has_digit(text: str) -> bool:
    return _DIGIT.search(text) is not None


# -- validations ---------------------------------------------------------------------------
CARD_PREFIX = re.compile(r"4|5[1-5]|2(?:2[2-9]|[3-6]\d|7[01]|720)|3[47]|3(?:0[0-5]|[689])|6(?:011|5|4[4-9]|22)|35(?:2[89]|[3-8])|62")


def valid_card(candidate: str) -> bool:
    digits = candidate.replace(" ", "").replace("-", "")
    if not 13 <= len(digits) <= 19 or not CARD_PREFIX.match(digits):
        return False
    if len(set(digits)) == 1:
        return False
    return bool(luhn.is_valid(digits))


def valid_iban(candidate: str) -> bool:
    return bool(stdnum_iban.is_valid(candidate))


def valid_ssn(candidate: str) -> bool:
    digits = re.sub(r"[ -]", "", candidate)
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    return digits not in ("078051120", "219099999", "123456789")


def valid_phone(candidate: str) -> bool:
    try:
        number = phonenumbers.parse(candidate, None if candidate.startswith("+") else "US")
    except phonenumbers.NumberParseException:
        return False
    return bool(phonenumbers.is_valid_number(number))


def valid_ip(candidate: str) -> bool:
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    if address.version == 6:
        # `::`, `1::` and other scraps of C++ or Rust are valid addresses but no one's
        return candidate.count(":") >= 2 and sum(c.isalnum() for c in candidate) >= 4
    return True


def entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    counts = Counter(text)
    size = len(text)
    return -sum(n / size * math.log2(n / size) for n in counts.values())


PLACEHOLDER_VALUES = re.compile(
    r"(?i)^(?:x+|\*+|\.+|-+|_+|<[^>]*>|\$\{[^}]*\}|\{\{[^}]*\}\}|%\(?[a-z_]*\)?s?"
    r"|changeme|password|secret|none|null|true|false|example\w*|your[_-]?\w*|redacted|\[[A-Z_]+\])$"
)


def assigned_secret(value: str) -> bool:
    """What detect-secrets' keyword rule would flag, less its usual false positives:
    a value of 8+ characters, not a placeholder or template, mixed enough to be a key."""
    value = value.strip("'\"")
    if len(value) < 8 or PLACEHOLDER_VALUES.match(value):
        return False
    if value.isalpha() and value.islower():
        return False  # a word (`password = lettersonly`) is a variable name more often than a secret
    return entropy(value) >= 3.0


def connection_password(value: str) -> bool:
    return not PLACEHOLDER_VALUES.match(value) and value not in ("password", "pass", "pwd")


# -- the detectors ---------------------------------------------------------------------------
EMAIL = Detector(
    "email", "EMAIL",
    # not the user and password of a URL (`scheme://user:pass@host`), but `mailto:` is an address
    re.compile(r"(?<![\w.%+-])(?:(?<=mailto:)|(?<!:))[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![\w-])"),
    hints=("@",), max_len=254,
)
PHONE = Detector(
    "phone", "PHONE",
    re.compile(
        r"(?<![\w+.-])(?:"
        r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}"  # international: +CC and groups
        r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"  # (415) 555-2671
        r"|\d{3}[.-]\d{3}[.-]\d{4}"  # 415-555-2671, 415.555.2671
        r"|\d{3} \d{3} \d{4}"
        r")(?![\w-]|\.\d)"
    ),
    validate=valid_phone, digits=True, max_len=32,
)
CREDIT_CARD = Detector(
    "credit_card", "CREDIT_CARD",
    re.compile(r"(?<![\w.-])(?:\d{4}[ -]?){2,3}\d{1,7}(?![\w-]|\.\d)"),
    validate=valid_card, digits=True, max_len=24,
)
IBAN = Detector(
    "iban", "IBAN",
    re.compile(r"(?<![\w-])[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?(?![\w-])"),
    validate=valid_iban, digits=True, max_len=42,
)
US_SSN = Detector(
    "us_ssn", "US_SSN",
    re.compile(r"(?<![\w-])\d{3}([- ])\d{2}\1\d{4}(?![\w-])"),
    validate=valid_ssn, digits=True, max_len=11,
)
IPV4 = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}"
IPV6 = r"(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|" + IPV4 + r")?"
IP_ADDRESS = Detector(
    "ip_address", "IP_ADDRESS",
    # not inside a longer dotted number (a version like 1.2.3.4.5), nor after `v`
    re.compile(r"(?<![\w.:])(?:" + IPV4 + r"(?![\w]|\.\d)|" + IPV6 + r"(?![\w:]|\.\d))"),
    validate=valid_ip, max_len=45,
)

# name -> (pattern, hints): each with a literal every match holds, so most text skips it
# whole. Sources: each provider's documented key format (and gitleaks' and detect-secrets'
# rules for the same providers).
SECRET_PATTERNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "aws_access_key_id": (r"\b(?:AKIA|ASIA|ABIA|ACCA|AIDA|AROA|AGPA|ANPA|ANVA|APKA)[A-Z2-7]{16}\b", ("A",)),
    "aws_secret_access_key": (r"(?i:aws.{0,20}?(?:secret|private).{0,20}?)[\s\"':=]{1,6}(?P<s>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])", ("ws", "WS")),
    "github_token": (r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b", ("gh", "github_pat_")),
    "gitlab_token": (r"\bgl(?:pat|dt|ptt|rt|cbt|oas|imt|agent|ft)-[A-Za-z0-9_-]{20,64}\b", ("gl",)),
    "slack_token": (r"\bxox[abposr]-(?:\d+-)+[A-Za-z0-9-]{10,100}\b|\bxapp-\d-[A-Z0-9]+-\d+-[a-f0-9]{32,80}\b", ("xox", "xapp-")),
    "slack_webhook": (r"https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9+/]{20,120}", ("hooks.slack",)),
    "anthropic_key": (r"\bsk-ant-(?:api|admin)\d\d-[A-Za-z0-9_-]{32,120}", ("sk-ant-",)),
    "openai_key": (r"\bsk-(?!ant-)(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_-]{20,200}(?<=[A-Za-z0-9])(?![A-Za-z0-9_-])", ("sk-",)),
    "google_api_key": (r"\bAIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])", ("AIza",)),
    "stripe_key": (r"\b(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{16,99}\b|\bwhsec_[0-9A-Za-z]{24,64}\b", ("_live_", "_test_", "whsec_")),
    "private_key": (
        r"-----BEGIN[A-Z ]{0,20} PRIVATE KEY(?: BLOCK)?-----(?:[\sA-Za-z0-9+/=:,-]{0,8192}?-----END[A-Z ]{0,20} PRIVATE KEY(?: BLOCK)?-----)?",
        ("PRIVATE KEY",),
    ),
    "jwt": (r"\beyJ[A-Za-z0-9_-]{8,2048}\.eyJ[A-Za-z0-9_-]{8,4096}\.[A-Za-z0-9_-]{16,1024}", ("eyJ",)),
    "connection_string": (r"\b[a-z][a-z0-9+.-]{1,20}://[^\s:/@\"'<>]{1,64}:(?P<s>[^\s@/\"'<>]{3,128})@[A-Za-z0-9.\[\]_-]{1,253}", ("://",)),
}
ASSIGNMENT = re.compile(
    r"(?i)(?<![A-Za-z0-9])(?:[a-z0-9]+[_.-])*(?:password|passwd|pwd|passphrase|secret|api[_-]?key|apikey|access[_-]?key|secret[_-]?key|"
    r"private[_-]?key|client[_-]?secret|auth[_-]?token|access[_-]?token|refresh[_-]?token|bearer[_-]?token|token)"
    r"[\"']?\s{0,3}(?::=|=>|[=:])\s{0,3}(?P<q>[\"']?)(?P<s>[^\s\"',;&]{8,200})(?P=q)"
)
ASSIGNMENT_HINTS = ("=", ":")
SECRET_MAX_LEN = 256  # what a stream holds back for the secret detector (longer ones: see `holdback`)


def _secret_matches(text: str) -> list[tuple[int, int]]:
    found: list[tuple[int, int]] = []
    for pattern, hints, check in _SECRETS:
        if not any(hint in text for hint in hints):
            continue
        for match in pattern.finditer(text):
            if check is None:
                found.append(match.span())
            elif check(match.group("s")):
                found.append(match.span("s"))
    if any(hint in text for hint in ASSIGNMENT_HINTS):
        for match in ASSIGNMENT.finditer(text):
            if assigned_secret(match.group("s")):
                found.append(match.span("s"))
    return found


CHECKS: dict[str, Validate] = {"connection_string": connection_password}
_SECRETS: tuple[tuple[re.Pattern[str], tuple[str, ...], Validate | None], ...] = tuple(
    (re.compile(pattern), hints, CHECKS.get(name, (lambda value: True) if "(?P<s>" in pattern else None))
    for name, (pattern, hints) in SECRET_PATTERNS.items()
)


@dataclass(frozen=True, slots=True)
class Secrets:
    """The `secret` detector: its own find, over every shape above."""

    name: str = "secret"
    label: str = "SECRET"
    max_len: int = SECRET_MAX_LEN

    def find(self, text: str) -> Iterable[tuple[int, int]]:
        return _secret_matches(text)


SECRET = Secrets()
BUILTIN: dict[str, Detector | Secrets] = {d.name: d for d in (EMAIL, PHONE, CREDIT_CARD, IBAN, US_SSN, IP_ADDRESS)}
BUILTIN["secret"] = SECRET
PII = ("email", "phone", "credit_card", "iban", "us_ssn", "ip_address")


def custom(name: str, label: str, pattern: re.Pattern[str], max_len: int) -> Detector:
    """A rule's own `regex:` (or its `keywords:`, compiled into one)."""
    return Detector(name, label, pattern, max_len=max_len)


def keywords_pattern(words: Sequence[str], case_sensitive: bool = False) -> re.Pattern[str]:
    """Whole words (or phrases), longest first so a phrase wins over a word inside it."""
    alternatives = "|".join(re.escape(word) for word in sorted(set(words), key=len, reverse=True))
    return re.compile(r"(?<!\w)(?:" + alternatives + r")(?!\w)", 0 if case_sensitive else re.IGNORECASE)


AnyDetector = Detector | Secrets


def scan(text: str, detectors: Iterable[AnyDetector]) -> list[tuple[int, int, AnyDetector]]:
    """Every finding of `detectors` in `text`, by start, overlaps resolved: the earliest
    start wins, then the longest span, then the detector listed first."""
    found: list[tuple[int, int, int, AnyDetector]] = []
    for order, detector in enumerate(detectors):
        for start, end in detector.find(text):
            if end > start:
                found.append((start, -end, order, detector))
    if not found:
        return []
    found.sort(key=lambda item: (item[0], item[1], item[2]))
    kept: list[tuple[int, int, AnyDetector]] = []
    reach = -1
    for start, negative_end, _, detector in found:
        if start >= reach:
            kept.append((start, -negative_end, detector))
            reach = -negative_end
    return kept
