"""The guard's built-in detectors: pure functions from text to the spans they find.

Each detector finds candidates with a regular expression and, where the format has one,
validates each with a well-kept library: Luhn for card numbers (python-stdnum), the ISO
13616 checksum and each country's BBAN layout for IBANs (python-stdnum), Google's
libphonenumber metadata for phone numbers (phonenumbers), `ipaddress` for IP addresses.

Fast on long text, in Python's `re`: an expression is only ever run where a match can be.
A scan of one text (`Text`) finds its runs of digits once, and the detectors of numbers
(phone, card, SSN, IPv4) look only inside those; an email is looked for only around an
`@`, an IPv6 address around a `::` or `h:h:`, a connection string around `://`, a
`password = ...` assignment around its keyword (found with `str.find` in the lowered
text); every other secret shape starts with a literal (`ghp_`, `sk-`, `AKIA`...), which
`re` finds as fast as `str.find`. So a 100 KB text costs a few passes at C speed plus
the candidates, and every expression is linear in the text it is given. Each match is at
most `max_len` characters: a stream holds back no more than that.

What each finds and misses is in README "Guard" (the detectors table); the labeled
corpus in tests/data/guard/ measures it (tests/test_guard_corpus.py).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn

Validate = Callable[[str], bool]
Span = tuple[int, int]
RUNS = re.compile(r"[0-9][-0-9 .()+/]{5,}[0-9]")  # digits with what numbers are written with between them
# windows closer than this are looked at in one call: `re` reads that many characters in
# about the time Python takes to make one more call
WINDOW_GAP = 96


class Text:
    """One text being scanned, with what several detectors need of it worked out once."""

    __slots__ = ("value", "_runs", "_lower", "_windows")

    def __init__(self, value: str) -> None:
        self.value = value
        self._runs: list[Span] | None = None
        self._lower: str | None = None
        self._windows: dict[int, list[Span]] = {}

    def runs(self) -> list[Span]:
        if self._runs is None:
            self._runs = [m.span() for m in RUNS.finditer(self.value)]
        return self._runs

    def windows(self, back: int) -> list[Span]:
        """The runs of digits widened by `back` characters before and one after, those
        that touch merged: where text is dense with numbers (a CSV) this is a few long
        windows, not one short call per number."""
        merged = self._windows.get(back)
        if merged is None:
            merged = []
            size = len(self.value)
            for start, end in self.runs():
                lo, hi = max(start - back, 0), min(end + 1, size)
                if merged and lo <= merged[-1][1] + WINDOW_GAP:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
                else:
                    merged.append((lo, hi))
            self._windows[back] = merged
        return merged

    def lower(self) -> str:
        if self._lower is None:
            self._lower = self.value.lower()
        return self._lower


def word_start(text: str, start: int) -> bool:
    """Nothing of a word (letter, digit, `_`) right before `start`: what `\\b` would say, checked after the fact."""
    return start == 0 or not (text[start - 1].isalnum() or text[start - 1] == "_")


@dataclass(frozen=True, slots=True)
class Detector:
    """A pattern run over the whole text: for patterns that start with a literal (which
    `re` finds at C speed) or for a rule's own pattern."""

    name: str  # what a rule's `detect:` names
    label: str  # the placeholder's name: [EMAIL], <EMAIL_1>
    pattern: re.Pattern[str]
    validate: Validate | None = None  # a candidate is a finding only when this says so
    max_len: int = 64  # the longest match: what a stream holds back for it
    group: str | None = None  # the named group that is the finding (the rest is context), else the whole match
    bounded: bool = False  # the match must start a word (`\b` before it, checked after the fact)
    context: Callable[[str, int], bool] | None = None  # (text, start): False when what comes before rules the match out
    hints: tuple[str, ...] = ()  # literals one of which every match holds: text without any is skipped at `str` speed

    def find(self, text: Text) -> Iterable[Span]:
        value = text.value
        if self.hints and not any(hint in value for hint in self.hints):
            return ()
        return self._take(value, self.pattern.finditer(value))

    def _take(self, value: str, matches: Iterable[re.Match[str]]) -> list[Span]:
        found: list[Span] = []
        bounded, group, context, validate = self.bounded, self.group, self.context, self.validate
        for match in matches:
            if bounded and not word_start(value, match.start()):
                continue
            start, end = match.span(group) if group else match.span()
            if start < 0 or (context is not None and not context(value, start)):
                continue
            if validate is None or validate(value[start:end]):
                found.append((start, end))
        return found


@dataclass(frozen=True, slots=True)
class NumberDetector(Detector):
    """A pattern run only inside the text's runs of digits (and the `back` characters
    before one: a `+` or `(` a number starts with, an IBAN's country and bank code)."""

    back: int = 2

    def find(self, text: Text) -> Iterable[Span]:
        value, finditer = text.value, self.pattern.finditer
        found: list[Span] = []
        for lo, hi in text.windows(self.back):
            found += self._take(value, finditer(value, lo, hi))
        return found


@dataclass(frozen=True, slots=True)
class AnchoredDetector(Detector):
    """A pattern run only near its anchors (literals every match holds: `@` for an email):
    from `back` characters before each to `max_len` after it."""

    anchors: tuple[str, ...] = ()
    back: int = 64
    lowered: bool = False  # the anchors are looked for in the lowered text
    anchor: re.Pattern[str] | None = None  # or an expression starting with a literal, for anchors a literal alone would find too often

    def find(self, text: Text) -> Iterable[Span]:
        value = text.value
        haystack = text.lower() if self.lowered else value
        windows: list[list[int]] = []
        reach = self.max_len + 1
        for anchor in self.anchors:
            at = haystack.find(anchor)
            while at >= 0:
                windows.append([max(at - self.back, 0), min(at + reach, len(value))])
                at = haystack.find(anchor, at + 1)
        if self.anchor is not None:
            windows += [[max(m.start() - self.back, 0), min(m.start() + reach, len(value))] for m in self.anchor.finditer(haystack)]
        if not windows:
            return
        windows.sort()
        merged = [windows[0]]
        for lo, hi in windows[1:]:
            if lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        for lo, hi in merged:
            yield from self._take(value, self.pattern.finditer(value, lo, hi))


# -- validations ---------------------------------------------------------------------------
CARD_PREFIX = re.compile(r"4|5[1-5]|2(?:2[2-9]|[3-6]\d|7[01]|720)|3[47]|3(?:0[0-5]|[689])|6(?:011|5|4[4-9]|22)|35(?:2[89]|[3-8])|62")


def valid_card(candidate: str) -> bool:
    digits = candidate.replace(" ", "").replace("-", "")
    if not 13 <= len(digits) <= 19 or not CARD_PREFIX.match(digits):
        return False
    if len(set(digits)) == 1:
        return False
    return bool(luhn.is_valid(digits))


IBAN_START = re.compile(r"[A-Z]{2}\d{2}[ ]?(?:[A-Z0-9]{4}[ ]?){0,2}\Z")


def not_in_iban(text: str, start: int) -> bool:
    """A card-like run of digits that is the rest of an IBAN (FR76 3000 6000 0112 ...) is the IBAN's."""
    return IBAN_START.search(text, max(start - 16, 0), start) is None


def not_in_url(text: str, start: int) -> bool:
    """`user:password@host` in a URL is no email address (the password is the connection string's secret)."""
    word = max(text.rfind(c, 0, start) for c in " \t\n\"'<>(")
    return "://" not in text[word + 1 : start]


def valid_iban(candidate: str) -> bool:
    return bool(stdnum_iban.is_valid(candidate))


def valid_ssn(candidate: str) -> bool:
    digits = candidate.replace("-", "").replace(" ", "")
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


CODE_VALUE = re.compile(r"(?:os\.|process\.env|getenv|environ|config\.|settings\.|self\.|this\.|[\[\](){}])")


def assigned_secret(value: str) -> bool:
    """What detect-secrets' keyword rule would flag, less its usual false positives:
    a value of 8+ characters, not a placeholder, template or code (`os.environ[...]`),
    mixed enough to be a key."""
    value = value.strip("'\"")
    if len(value) < 8 or PLACEHOLDER_VALUES.match(value) or CODE_VALUE.search(value):
        return False
    if value.isalpha() and value.islower():
        return False  # a word (`password = lettersonly`) is a variable name more often than a secret
    return entropy(value) >= 3.0


def connection_password(value: str) -> bool:
    return not PLACEHOLDER_VALUES.match(value) and value not in ("password", "pass", "pwd")


# -- the detectors ---------------------------------------------------------------------------
EMAIL = AnchoredDetector(
    "email", "EMAIL",
    # not the user and password of a URL (`scheme://user:pass@host`), but `mailto:` is an address
    re.compile(
        r"(?<![\w.%+-])(?:(?<=mailto:)|(?<!:))[A-Za-z0-9][A-Za-z0-9._%+'-]{0,63}@"
        r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![\w-])"
    ),
    max_len=254, anchors=("@",), back=64, context=not_in_url,
)
PHONE = NumberDetector(
    "phone", "PHONE",
    re.compile(
        r"(?<![\w+.-])(?:"
        r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}"  # international: +CC and groups
        r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"  # (415) 555-2671
        r"|\d{3}[.-]\d{3}[.-]\d{4}"  # 415-555-2671, 415.555.2671
        r"|\d{3} \d{3} \d{4}"
        r")(?![\w-]|\.\d)"
    ),
    validate=valid_phone, max_len=32,
)
CREDIT_CARD = NumberDetector(
    "credit_card", "CREDIT_CARD",
    # groups of four (Visa, Mastercard, Discover, JCB: 4-4-4-4), or Amex's 4-6-5
    re.compile(r"(?<![\w.-])(?:\d{4}([ -]?)\d{6}\1\d{5}|(?:\d{4}[ -]?){2,3}\d{1,7})(?![\w-]|\.\d)"),
    validate=valid_card, max_len=24, context=not_in_iban,
)
US_SSN = NumberDetector(
    "us_ssn", "US_SSN",
    re.compile(r"(?<![\w-])\d{3}([- ])\d{2}\1\d{4}(?![\w-])"),
    validate=valid_ssn, max_len=11,
)
IBAN = NumberDetector(
    "iban", "IBAN",
    # every IBAN holds a run of digits (its account number), at most 34 characters after its start
    re.compile(r"[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?(?![\w-])"),
    validate=valid_iban, max_len=42, bounded=True, back=34,
)
IPV4 = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}"
IPV6 = r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|" + IPV4 + r")?(?![\w:]|\.\d)"


@dataclass(frozen=True, slots=True)
class IPAddresses:
    """IPv4 inside the runs of digits (not inside a longer dotted number such as the
    version 1.2.3.4.5), IPv6 near a `::` or an `h:h:` group; both validated by `ipaddress`."""

    name: str = "ip_address"
    label: str = "IP_ADDRESS"
    max_len: int = 45
    v4: NumberDetector = NumberDetector("ip_address", "IP_ADDRESS", re.compile(r"(?<![\w.])" + IPV4 + r"(?![\w]|\.\d)"), valid_ip, 15)
    v6: AnchoredDetector = AnchoredDetector("ip_address", "IP_ADDRESS", re.compile(IPV6), valid_ip, 45, back=40, anchor=re.compile(r":[0-9A-Fa-f]{0,4}:"))

    def find(self, text: Text) -> Iterable[Span]:
        yield from self.v4.find(text)
        if text.value.count(":") >= 2:
            yield from self.v6.find(text)


IP_ADDRESS = IPAddresses()


def aws_key_id(candidate: str) -> bool:
    return candidate[:4] in ("AKIA", "ASIA", "ABIA", "ACCA", "AIDA", "AROA", "AGPA", "ANPA", "ANVA", "APKA")


def anything(value: str) -> bool:
    return True


# Every secret shape, each starting with a literal `re` finds at speed (or anchored on
# one). Sources: each provider's documented key format, and gitleaks' and detect-secrets'
# rules for the same providers.
SECRET_MAX_LEN = 256  # what a stream holds back for the secret detector: a longer match grows in the held part
SECRET_SHAPES: tuple[Detector, ...] = (
    Detector("aws_access_key_id", "SECRET", re.compile(r"A[KSBCIRGNP][A-Z]{2}[A-Z2-7]{16}(?![A-Za-z0-9])"), aws_key_id, bounded=True, hints=("A",)),
    AnchoredDetector(
        "aws_secret_access_key", "SECRET",
        re.compile(r"(?i:aws[\w.-]{0,20}?(?:secret|private)[\w.-]{0,20}?)[\s\"':=]{1,6}(?P<s>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"),
        anything, 120, "s", anchors=("aws",), back=0, lowered=True,
    ),
    Detector("github_token", "SECRET", re.compile(r"gh[pousr]_[A-Za-z0-9]{36,255}(?![A-Za-z0-9_])"), bounded=True, max_len=260, hints=("gh",)),
    Detector("github_pat", "SECRET", re.compile(r"github_pat_[A-Za-z0-9_]{22,255}"), bounded=True, max_len=266, hints=("github_pat_",)),
    Detector(
        "gitlab_token", "SECRET", re.compile(r"gl(?:pat|dt|ptt|rt|cbt|oas|imt|agent|ft)-[A-Za-z0-9_-]{20,64}(?![A-Za-z0-9_-])"), bounded=True, hints=("gl",),
    ),
    Detector("slack_token", "SECRET", re.compile(r"xox[abposr]-(?:\d+-)+[A-Za-z0-9-]{10,100}"), bounded=True, max_len=160, hints=("xox",)),
    Detector("slack_app_token", "SECRET", re.compile(r"xapp-\d-[A-Z0-9]+-\d+-[a-f0-9]{32,80}"), bounded=True, max_len=160, hints=("xapp-",)),
    Detector(
        "slack_webhook", "SECRET", re.compile(r"https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9+/]{20,120}"), max_len=160, hints=("hooks.slack",),
    ),
    Detector("anthropic_key", "SECRET", re.compile(r"sk-ant-(?:api|admin)\d\d-[A-Za-z0-9_-]{32,120}"), bounded=True, max_len=140, hints=("sk-ant-",)),
    Detector(
        "openai_key", "SECRET", re.compile(r"sk-(?!ant-)(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_-]{20,200}(?<=[A-Za-z0-9])(?![A-Za-z0-9_-])"),
        bounded=True, max_len=220, hints=("sk-",),
    ),
    Detector("google_api_key", "SECRET", re.compile(r"AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])"), bounded=True, hints=("AIza",)),
    AnchoredDetector(
        "stripe_key", "SECRET", re.compile(r"(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,99}(?![0-9A-Za-z])"), max_len=110, bounded=True,
        anchors=("_live_", "_test_"), back=2,
    ),
    Detector("stripe_webhook_secret", "SECRET", re.compile(r"whsec_[0-9A-Za-z]{24,64}"), bounded=True, max_len=70, hints=("whsec_",)),
    Detector(
        "private_key", "SECRET",
        re.compile(r"-----BEGIN[A-Z ]{0,20} PRIVATE KEY(?: BLOCK)?-----(?:[\sA-Za-z0-9+/=:,-]{0,8192}?-----END[A-Z ]{0,20} PRIVATE KEY(?: BLOCK)?-----)?"),
        max_len=SECRET_MAX_LEN, hints=("PRIVATE KEY",),
    ),
    Detector(
        "jwt", "SECRET", re.compile(r"eyJ[A-Za-z0-9_-]{8,2048}\.eyJ[A-Za-z0-9_-]{8,4096}\.[A-Za-z0-9_-]{16,1024}"), bounded=True, max_len=SECRET_MAX_LEN,
        hints=("eyJ",),
    ),
    AnchoredDetector(
        "connection_string", "SECRET",
        re.compile(r"[a-z][a-z0-9+.-]{1,20}://[^\s:/@\"'<>]{1,64}:(?P<s>[^\s@/\"'<>]{3,128})@[A-Za-z0-9.\[\]_-]{1,253}"),
        connection_password, SECRET_MAX_LEN, "s", bounded=True, back=22, anchor=re.compile(r"://[^\s:/@\"'<>]{1,64}:[^\s@/\"'<>]{3,128}@"),
    ),
    AnchoredDetector(
        "assignment", "SECRET",
        re.compile(
            r"(?i)(?<![A-Za-z0-9])(?:password|passwd|pwd|passphrase|secret|api[_-]?key|apikey|access[_-]?key|secret[_-]?key|"
            r"private[_-]?key|client[_-]?secret|auth[_-]?token|access[_-]?token|refresh[_-]?token|bearer[_-]?token|token)"
            r"[\"']?\s{0,3}(?::=|=>|[=:])\s{0,3}(?P<q>[\"']?)(?P<s>[^\s\"',;&]{8,200})(?P=q)"
        ),
        assigned_secret, SECRET_MAX_LEN, "s", anchors=("pass", "pwd", "secret", "key", "token"), back=16, lowered=True,
    ),
)


@dataclass(frozen=True, slots=True)
class Secrets:
    """The `secret` detector: every shape in SECRET_SHAPES (a rule names `secret` for all)."""

    name: str = "secret"
    label: str = "SECRET"
    max_len: int = SECRET_MAX_LEN
    shapes: tuple[Detector, ...] = field(default=SECRET_SHAPES)

    def find(self, text: Text) -> Iterable[Span]:
        for shape in self.shapes:
            yield from shape.find(text)


SECRET = Secrets()
AnyDetector = Detector | IPAddresses | Secrets
BUILTIN: dict[str, AnyDetector] = {d.name: d for d in (EMAIL, PHONE, CREDIT_CARD, IBAN, US_SSN, IP_ADDRESS, SECRET)}
PII = ("email", "phone", "credit_card", "iban", "us_ssn", "ip_address")


def custom(name: str, label: str, pattern: re.Pattern[str], max_len: int) -> Detector:
    """A rule's own `regex:` (or its `keywords:`, compiled into one)."""
    return Detector(name, label, pattern, max_len=max_len)


def keywords_pattern(words: Sequence[str], case_sensitive: bool = False) -> re.Pattern[str]:
    """Whole words (or phrases), longest first so a phrase wins over a word inside it."""
    alternatives = "|".join(re.escape(word) for word in sorted(set(words), key=len, reverse=True))
    return re.compile(r"(?<!\w)(?:" + alternatives + r")(?!\w)", 0 if case_sensitive else re.IGNORECASE)


def scan(text: str, detectors: Iterable[AnyDetector], first: int = 0) -> list[tuple[int, int, AnyDetector]]:
    """Every finding of `detectors` in `text`, by start, overlaps resolved: the earliest
    start wins, then the longest span, then the detector listed first. A finding of one
    of the `first` detectors is never hidden by another's: when there is one, it alone is
    the answer (a block stands whatever overlaps it)."""
    found: list[tuple[int, int, int, AnyDetector]] = []
    scanned = Text(text)
    for order, detector in enumerate(detectors):
        for start, end in detector.find(scanned):
            if end > start:
                if order < first:
                    return [(start, end, detector)]
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
