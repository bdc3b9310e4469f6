"""Writes corpus.jsonl: the guard detectors' labeled corpus (tests/test_guard_corpus.py).

Every value is synthetic (random, valid by construction where the format has a check:
Luhn, IBAN check digits, libphonenumber's example numbers with other subscriber digits,
SSNs in issued ranges) and is set in prose, code, JSON, CSV and CJK text; beside them,
look-alikes that must not be found: order and tracking numbers, UUIDs, version strings,
hashes, timestamps, ISBNs, card-length numbers that fail Luhn, placeholder passwords.
Each line: {"kind": "prose|code|json|csv|cjk", "text": ..., "labels": [[detector, value], ...]}.
Fixed seed: running it again writes the same file.

    .venv/bin/python tests/data/guard/make_corpus.py
"""

from __future__ import annotations

import base64
import json
import random
import string
from pathlib import Path

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn

rng = random.Random(21)
FIRST = ["jane", "john", "li", "maria", "ahmed", "olga", "kenji", "sara", "pierre", "o'neil", "anna-lena", "raj"]
LAST = ["doe", "smith", "wang", "garcia", "khan", "ivanova", "tanaka", "cohen", "dupont", "murphy", "schmidt", "patel"]
DOMAINS = ["example.com", "corp.example", "mail.example.org", "example.co.uk", "sub.dept.example.net", "example.io"]


def email() -> str:
    local = rng.choice(FIRST) + rng.choice([".", "_", "", "+news."]) + rng.choice(LAST)
    if rng.random() < 0.2:
        local += str(rng.randint(1, 99))
    return f"{local}@{rng.choice(DOMAINS)}"


def phone() -> str:
    region = rng.choice(["US", "US", "US", "GB", "DE", "FR", "JP", "IN", "BR", "AU"])
    for _ in range(50):
        base = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
        digits = str(base.national_number)
        digits = digits[:-4] + "".join(rng.choice(string.digits) for _ in range(4))
        number = phonenumbers.parse("+" + str(base.country_code) + digits)
        if phonenumbers.is_valid_number(number):
            break
    if region == "US" and rng.random() < 0.6:
        national = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
        return rng.choice([national, national.replace("(", "").replace(") ", "-"), national.replace("(", "").replace(") ", ".").replace("-", ".")])
    return phonenumbers.format_number(number, rng.choice([phonenumbers.PhoneNumberFormat.INTERNATIONAL, phonenumbers.PhoneNumberFormat.E164]))


def card() -> str:
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15), ("6011", 16), ("3530", 16), ("3589", 16)])
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    number = body + luhn.calc_check_digit(body)
    style = rng.choice(["plain", "space", "dash"])
    if style == "plain":
        return number
    sep = " " if style == "space" else "-"
    groups = [number[:4], number[4:10], number[10:]] if length == 15 else [number[i : i + 4] for i in range(0, 16, 4)]
    return sep.join(groups)


def iban() -> str:
    country = rng.choice(["DE", "GB", "NL", "FR", "ES", "IT", "BE", "CH"])
    layouts = {"DE": [("n", 18)], "GB": [("a", 4), ("n", 14)], "NL": [("a", 4), ("n", 10)], "FR": [("n", 23)], "ES": [("n", 20)],
               "IT": [("a", 1), ("n", 22)], "BE": [("n", 12)], "CH": [("n", 17)]}
    for _ in range(200):
        bban = "".join(rng.choice(string.ascii_uppercase if kind == "a" else string.digits) for kind, count in layouts[country] for _ in range(count))
        number = country + stdnum_iban.calc_check_digits(country + "00" + bban) + bban
        if stdnum_iban.is_valid(number):
            break
    else:
        number = "DE89370400440532013000"
    return stdnum_iban.format(number) if rng.random() < 0.6 else number


def ssn() -> str:
    area = rng.choice([n for n in range(1, 900) if n != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def ip() -> str:
    if rng.random() < 0.7:
        return ".".join(str(rng.randint(1, 254)) for _ in range(4))
    groups = [f"{rng.randint(0, 65535):x}" for _ in range(8)]
    if rng.random() < 0.5:
        return ":".join(groups)
    return ":".join(groups[:3]) + "::" + ":".join(groups[6:])


def b64url(size: int) -> str:
    return base64.urlsafe_b64encode(bytes(rng.getrandbits(8) for _ in range(size))).decode().rstrip("=")


def token(alphabet: str, size: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(size))


ALNUM = string.ascii_letters + string.digits


def secret() -> str:
    kind = rng.choice(["aws", "github", "gitlab", "slack", "openai", "anthropic", "google", "stripe", "jwt", "url", "assign", "pem"])
    if kind == "aws":
        return "AKIA" + token(string.ascii_uppercase + "234567", 16)
    if kind == "github":
        return rng.choice(["ghp_", "gho_", "ghs_"]) + token(ALNUM, 36)
    if kind == "gitlab":
        return "glpat-" + token(ALNUM + "_-", 20)
    if kind == "slack":
        return f"xoxb-{rng.randint(10**10, 10**12)}-{rng.randint(10**10, 10**12)}-{token(ALNUM, 24)}"
    if kind == "openai":
        return "sk-proj-" + token(ALNUM + "_-", 48) + token(ALNUM, 4)
    if kind == "anthropic":
        return "sk-ant-api03-" + token(ALNUM + "_-", 93) + "AA"
    if kind == "google":
        return "AIza" + token(ALNUM + "_-", 35)
    if kind == "stripe":
        return rng.choice(["sk_live_", "rk_live_", "sk_test_"]) + token(ALNUM, 24)
    if kind == "jwt":
        header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').decode().rstrip("=")
        claims = base64.urlsafe_b64encode(json.dumps({"sub": str(rng.randint(1, 10**6)), "exp": 1900000000}).encode()).decode().rstrip("=")
        return f"{header}.{claims}.{b64url(32)}"
    if kind == "url":
        return "PASSWORD_IN_URL:" + token(ALNUM + "!#%^*", 14)
    if kind == "assign":
        return "ASSIGNED:" + token(ALNUM + "!#$%^*", 20)
    body = "\n".join(base64.b64encode(bytes(rng.getrandbits(8) for _ in range(48))).decode() for _ in range(4))
    return f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----"


MAKERS = {"email": email, "phone": phone, "credit_card": card, "iban": iban, "us_ssn": ssn, "ip_address": ip, "secret": secret}


def hard(detector: str) -> str | None:
    """A value written in a way the detector is documented to miss (README "Guard"), or None."""
    if detector == "phone":  # a national number of another country, without its +CC
        return rng.choice(["07400 " + token(string.digits, 6), "030 " + token(string.digits, 8), "06 " + " ".join(token(string.digits, 2) for _ in range(4))])
    if detector == "credit_card":  # dots between the groups
        return ".".join(card().replace(" ", "").replace("-", "")[i : i + 4] for i in range(0, 16, 4)) if rng.random() < 0.5 else None
    if detector == "us_ssn":  # nine digits without separators
        return ssn().replace("-", "")
    if detector == "email":  # written out to dodge scrapers
        return email().replace("@", " at ").replace(".", " dot ")
    if detector == "secret":  # a bare random key with no known prefix and no keyword before it
        return token(ALNUM, 40)
    return None


def placed(detector: str) -> tuple[str, str, str]:
    """(value as found, a phrase holding it, the phrase's kind)."""
    value = (hard(detector) if rng.random() < 0.1 else None) or MAKERS[detector]()
    if detector == "secret" and value.startswith("PASSWORD_IN_URL:"):
        value = value.split(":", 1)[1]
        return value, f"postgres://app_user:{value}@db-{rng.randint(1, 9)}.internal:5432/orders", "code"
    if detector == "secret" and value.startswith("ASSIGNED:"):
        value = value.split(":", 1)[1]
        return value, rng.choice([f'DB_PASSWORD="{value}"', f"api_key: {value}", f"client_secret = '{value}'", f'"password": "{value}"']), "code"
    kind = rng.choice(["prose", "prose", "code", "json", "csv", "cjk"])
    phrase = {
        "prose": rng.choice(["Please send it to {v} before Friday.", "Her details: {v}.", "I pasted this from the ticket: {v} (see above)",
                             "Use {v}, thanks!"]),
        "code": rng.choice(['value = "{v}"', "export VALUE={v}", "  contact: {v}", "cfg.set('x', '{v}')  # from prod"]),
        "json": rng.choice(['{{"id": 7, "value": "{v}", "active": true}}', '[{{"field": "{v}"}}]']),
        "csv": rng.choice(["42,Jane Roe,{v},2024-03-01", "{v};ok;17"]),
        "cjk": rng.choice(["请联系 {v} 获取详细信息。", "担当者の連絡先は {v} です。", "고객 정보: {v} 확인 바랍니다"]),
    }[kind]
    return value, phrase.format(v=value), kind


NEGATIVES = [
    lambda: f"Order ORD-{rng.randint(2019, 2025)}-{rng.randint(1, 999999):06d} shipped.",
    lambda: f"Order #{rng.randint(10**15, 10**16 - 1)} is late",  # 16 digits, Luhn by chance one time in ten
    lambda: f"request id {__import__('uuid').UUID(int=rng.getrandbits(128))}",
    lambda: f"upgrade to v{rng.randint(0, 20)}.{rng.randint(0, 40)}.{rng.randint(0, 99)}",
    lambda: f"Windows build 10.0.{rng.randint(10000, 22631)}.{rng.randint(1, 3000)}",
    lambda: f"version {rng.randint(1, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}",
    lambda: f"commit {token('0123456789abcdef', 40)}",
    lambda: f"sha256: {token('0123456789abcdef', 64)}",
    lambda: f"md5 {token('0123456789abcdef', 32)}",
    lambda: f"at {rng.randint(2000, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
    f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}",
    lambda: f"ISBN 978-{rng.randint(0, 9)}-{rng.randint(10, 99)}-{rng.randint(100000, 999999)}-{rng.randint(0, 9)}",
    lambda: f"tracking 1Z{token(string.ascii_uppercase + string.digits, 16)}",
    lambda: f"total ${rng.randint(1, 99999):,}.{rng.randint(0, 99):02d} for {rng.randint(1, 50)} items",
    lambda: f"ZIP {rng.randint(10000, 99999)}-{rng.randint(1000, 9999)}",
    lambda: f"part no. {rng.randint(100, 999)}-{rng.randint(10, 99)}-{rng.randint(100, 999)}",
    lambda: "password: ********",
    lambda: "password = None",
    lambda: "api_key = os.environ['OPENAI_API_KEY']",
    lambda: "token: ${GITHUB_TOKEN}",
    lambda: "Set secret: <your-secret-here> in the config",
    lambda: "the model used max_tokens: 4096 and 1200 tokens",
    lambda: "pip install scikit-learn; from sklearn import svm",
    lambda: "see https://docs.example.com/v2/guide#section-3",
    lambda: "ratio 3:4:5 at 12:30:45",
    lambda: "C++: std::vector<int>::iterator it;",
    lambda: f"phone extension {rng.randint(100, 999)}",
    lambda: f"{rng.randint(100, 999)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}".replace("-", "/"),
    lambda: f"coordinates {rng.uniform(-90, 90):.6f}, {rng.uniform(-180, 180):.6f}",
    lambda: f"account {rng.randint(10**9, 10**10 - 1)}",
    lambda: f"价格是 {rng.randint(100, 9999)} 元，订单号 {rng.randint(10**9, 10**10)}。",
    lambda: f"バージョン {rng.randint(1, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 9)} をリリースしました",
    lambda: f"user@localhost and admin@ mention @{rng.choice(FIRST)}",
    lambda: f"image sha {b64url(24)}",
    lambda: "AKIA is the prefix of AWS access key ids, like AKIA followed by 16 characters",
    lambda: f"CSV row: {rng.randint(1, 99)},{rng.randint(1000, 9999)},{rng.randint(100000, 999999)},{rng.randint(10, 99)}.{rng.randint(0, 99)}",
    lambda: f"def f(x): return x + {rng.randint(1, 100)}  # token = x",
    lambda: f"GUID {{{__import__('uuid').UUID(int=rng.getrandbits(128))}}}".upper(),
    lambda: f"git describe: v1.4.2-{rng.randint(1, 99)}-g{token('0123456789abcdef', 7)}",
]


def main() -> None:
    lines = []
    per_detector = 60
    for detector in MAKERS:
        for _ in range(per_detector):
            value, phrase, kind = placed(detector)
            lines.append({"kind": kind, "text": phrase, "labels": [[detector, value]]})
    # several values in one text, and a negative beside each
    for _ in range(60):
        chosen = rng.sample([d for d in MAKERS if d != "secret"], 2)
        parts, labels = [], []
        for detector in chosen:
            value, phrase, _ = placed(detector)
            parts.append(phrase)
            labels.append([detector, value])
        parts.append(rng.choice(NEGATIVES)())
        rng.shuffle(parts)
        lines.append({"kind": "mixed", "text": " ".join(parts), "labels": labels})
    for make in NEGATIVES:
        for _ in range(6):
            lines.append({"kind": "negative", "text": make(), "labels": []})
    path = Path(__file__).with_name("corpus.jsonl")
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    print(f"{path}: {len(lines)} texts, {sum(len(line['labels']) for line in lines)} labels")


if __name__ == "__main__":
    main()
