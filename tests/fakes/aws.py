"""AWS as the fake upstream plays it: SigV4 checked by recomputing the signature from
the request as it arrived (written from AWS's published algorithm, not with the
signer lockgate uses), the event-stream framing with both CRCs, and the endpoints
the AWS credential chain calls (container credentials, STS web identity)."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import struct
import zlib
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote

from starlette.requests import Request


@dataclass
class AwsAccounts:
    """Access key id -> (secret, session token or None): the keys the fake accepts."""

    keys: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    signed: list[str] = field(default_factory=list)  # access key of every request that verified
    region: str = "us-east-1"

    def issue(self, prefix: str = "ASIA") -> tuple[str, str, str]:
        """Temporary credentials, as STS or a metadata endpoint hands them out."""
        access = prefix + secrets.token_hex(8).upper()
        secret, token = secrets.token_urlsafe(30), "FwoG" + secrets.token_urlsafe(60)
        self.keys[access] = (secret, token)
        return access, secret, token


def hmac_sha256(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def verify_sigv4(request: Request, body: bytes, accounts: AwsAccounts, service: str) -> str | None:
    """None when the request is signed right, else the reason AWS would give."""
    auth = request.headers.get("authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return "MissingAuthenticationToken: Missing Authentication Token"
    fields = dict(part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 ") :].split(","))
    access, date, region, service_name, terminal = fields["Credential"].split("/")
    if access not in accounts.keys:
        return "UnrecognizedClientException: The security token included in the request is invalid."
    secret, token = accounts.keys[access]
    if token is not None and request.headers.get("x-amz-security-token") != token:
        return "UnrecognizedClientException: The security token included in the request is invalid."
    if (region, service_name, terminal) != (accounts.region, service, "aws4_request"):
        return f"InvalidSignatureException: Credential should be scoped to a valid region and service {accounts.region}/{service}."
    amz_date = request.headers.get("x-amz-date", "")
    try:
        when = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return "IncompleteSignatureException: x-amz-date is missing or malformed"
    if abs((dt.datetime.now(dt.UTC) - when).total_seconds()) > 300 or amz_date[:8] != date:
        return "InvalidSignatureException: Signature expired"
    signed_headers = fields["SignedHeaders"].split(";")
    if "host" not in signed_headers:
        return "InvalidSignatureException: host must be a signed header"
    # the path as it came over the wire, each segment URI-encoded once more (non-S3 rule)
    raw_path = request.scope.get("raw_path", request.url.path.encode()).decode()
    canonical_uri = quote(raw_path, safe="/~")
    query = sorted(parse_qsl(request.url.query, keep_blank_values=True))
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in query)
    canonical_headers = "".join(f"{name}:{' '.join(request.headers.get(name, '').split())}\n" for name in signed_headers)
    canonical = "\n".join(
        [request.method, canonical_uri, canonical_query, canonical_headers, fields["SignedHeaders"], hashlib.sha256(body).hexdigest()]
    )
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = hmac_sha256(("AWS4" + secret).encode(), date)
    for part in (region, service, "aws4_request"):
        key = hmac_sha256(key, part)
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, fields.get("Signature", "")):
        return "InvalidSignatureException: The request signature we calculated does not match the signature you provided."
    accounts.signed.append(access)
    return None


# -- event stream --------------------------------------------------------------------


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: total and headers length, prelude CRC, headers
    (string values, type 7), payload, CRC of everything before it."""
    encoded = b""
    for name, value in headers.items():
        name_bytes, value_bytes = name.encode(), value.encode()
        encoded += struct.pack(">B", len(name_bytes)) + name_bytes + b"\x07" + struct.pack(">H", len(value_bytes)) + value_bytes
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(kind: str, payload: bytes) -> bytes:
    return frame({":event-type": kind, ":content-type": "application/json", ":message-type": "event"}, payload)


def exception(kind: str, message: bytes) -> bytes:
    return frame({":exception-type": kind, ":content-type": "application/json", ":message-type": "exception"}, message)
