"""AWS credentials and SigV4 signing for Bedrock, through botocore.

botocore is AWS's own implementation of both: the signer AWS's SDKs use, and the
standard credential chain (environment, shared `credentials` / `config` files and
profiles, web identity for EKS/OpenShift IRSA, container and instance metadata),
with refresh of the temporary credentials the last three hand out. Hand-writing
either is how signatures break on edge cases (paths holding `:`, session tokens,
clock skew), so this module only decides when to call it.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from yarl import URL

from lockgate.providers.base import CredentialsError, UpstreamRequest

if TYPE_CHECKING:  # botocore itself is imported on first use
    from botocore.credentials import Credentials, ReadOnlyCredentials

# botocore's signer and credential chain cost ~20 MB and 0.2 s to import: they are
# imported on first use, so a gateway without bedrock deployments never loads them.

NO_CREDENTIALS = (
    "no AWS credentials found: set aws_access_key_id / aws_secret_access_key on the deployment, "
    "or provide them through the AWS chain (AWS_ACCESS_KEY_ID, ~/.aws/credentials, web identity, "
    "container or instance metadata)"
)


def default_region() -> str | None:
    """The region the AWS chain names (AWS_REGION, AWS_DEFAULT_REGION, the profile's)."""
    from botocore.session import Session

    return os.environ.get("AWS_REGION") or Session().get_config_variable("region")


class AwsCredentials:
    """One deployment's credentials: fixed keys, or the AWS chain resolved on first use.

    The chain can call metadata endpoints, and refreshing temporary credentials calls
    STS or the metadata service again; both block, so they run in a thread, one at a
    time, and the answer is reused until botocore says it needs refreshing.
    """

    def __init__(self, access_key: str | None = None, secret_key: str | None = None, token: str | None = None, profile: str | None = None) -> None:
        self._fixed_keys = (access_key, secret_key, token) if access_key and secret_key else None
        self._fixed: ReadOnlyCredentials | None = None
        self._profile = profile
        self._chain: Credentials | None = None  # once resolved
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return "AwsCredentials(fixed)" if self._fixed_keys else f"AwsCredentials(chain, profile={self._profile!r})"

    async def current(self) -> ReadOnlyCredentials:
        """Frozen (access key, secret, token) good for signing now."""
        from botocore.credentials import ReadOnlyCredentials, RefreshableCredentials
        from botocore.exceptions import BotoCoreError, ClientError

        if self._fixed_keys is not None:
            if self._fixed is None:
                self._fixed = ReadOnlyCredentials(*self._fixed_keys)
            return self._fixed
        chain = self._chain
        if chain is not None and not (isinstance(chain, RefreshableCredentials) and chain.refresh_needed()):
            return chain.get_frozen_credentials()
        async with self._lock:
            try:
                if self._chain is None:
                    self._chain = await asyncio.to_thread(self._resolve)
                # a refresh, when due, happens inside get_frozen_credentials
                return await asyncio.to_thread(self._chain.get_frozen_credentials)
            except (BotoCoreError, ClientError) as exc:
                self._chain = None
                raise CredentialsError(f"AWS credentials could not be loaded: {type(exc).__name__}") from None

    def _resolve(self) -> Credentials:
        from botocore.session import Session

        credentials = Session(profile=self._profile).get_credentials()
        if credentials is None:
            raise CredentialsError(NO_CREDENTIALS)
        return credentials


async def sign(request: UpstreamRequest, credentials: AwsCredentials, service: str, region: str) -> None:
    """Adds SigV4 headers for the request exactly as it will go on the wire: the URL is
    first put in the form the HTTP client sends (yarl's), so the signed path and the
    sent path cannot differ (Bedrock model ids hold `:`, ARNs hold `/`)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    frozen = await credentials.current()
    request.url = str(URL(request.url))
    aws = AWSRequest(method=request.method, url=request.url, data=request.body, headers=dict(request.headers))
    SigV4Auth(frozen, service, region).add_auth(aws)
    for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
        if name in aws.headers:
            request.headers[name.lower()] = aws.headers[name]


# -- the other way: SigV4 signatures of clients, checked (the Bedrock dialect) ---------------

SIGV4 = "AWS4-HMAC-SHA256"
MAX_SKEW_S = 300  # AWS's own limit: a signature dated more than 5 minutes off is refused
UNSIGNED = "UNSIGNED-PAYLOAD"


class SignatureError(Exception):
    """Why a SigV4-signed request is refused: `kind` is the exception AWS names for it."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True, slots=True)
class SignedBy:
    """What a SigV4 Authorization header says: who signed, the scope, what was signed."""

    access_key: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def signed_by(authorization: str) -> SignedBy:
    """The parts of `AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request,
    SignedHeaders=a;b, Signature=hex` (raises SignatureError)."""
    if not authorization.startswith(SIGV4 + " "):
        raise SignatureError("IncompleteSignatureException", "The Authorization header is not an AWS4-HMAC-SHA256 signature.")
    fields: dict[str, str] = {}
    for part in authorization[len(SIGV4) + 1 :].split(","):
        name, _, value = part.strip().partition("=")
        fields[name] = value
    scope = fields.get("Credential", "").split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not fields.get("SignedHeaders") or not fields.get("Signature"):
        raise SignatureError("IncompleteSignatureException", "The Authorization header needs Credential, SignedHeaders and Signature.")
    return SignedBy(scope[0], scope[1], scope[2], scope[3], tuple(fields["SignedHeaders"].split(";")), fields["Signature"])


def check_signature(signer: SignedBy, secret: str, method: str, raw_path: bytes, query: bytes,
                    headers: tuple[tuple[bytes, bytes], ...], body: bytes, now: float | None = None) -> None:
    """Checks a client's SigV4 signature over the request as it arrived (raises
    SignatureError). The canonical request is botocore's own (SigV4Auth, the code that
    signs lockgate's Bedrock calls), fed the signed headers alone and the date the
    client signed at; the body's own hash always (UNSIGNED-PAYLOAD only where the client
    signed an `X-Amz-Content-SHA256` saying so: an unsigned body could be swapped).
    Compared in constant time."""
    import datetime as dt
    import hashlib
    import hmac

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import ReadOnlyCredentials

    by_name: dict[str, list[str]] = {}
    for name, value in headers:
        by_name.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    amz_date = (by_name.get("x-amz-date") or [""])[0]
    try:
        when = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise SignatureError("IncompleteSignatureException", "X-Amz-Date is missing or malformed.") from None
    current = dt.datetime.now(dt.UTC).timestamp() if now is None else now
    if abs(current - when.timestamp()) > MAX_SKEW_S or amz_date[:8] != signer.date:
        raise SignatureError("InvalidSignatureException", "Signature expired: the request's date is more than 5 minutes from the gateway's clock.")
    if "host" not in signer.signed_headers:
        raise SignatureError("InvalidSignatureException", "host must be a signed header.")
    missing = [name for name in signer.signed_headers if name not in by_name]
    if missing:
        raise SignatureError("InvalidSignatureException", f"A signed header is missing: {missing[0]}.")
    signed = {name: ",".join(by_name[name]) for name in signer.signed_headers}
    url = "http://" + by_name["host"][0] + raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
    request = AWSRequest(method=method, url=url, data=body, headers=signed)
    request.context["timestamp"] = amz_date
    declared = (by_name.get("x-amz-content-sha256") or [""])[0]
    if declared and declared != UNSIGNED and not hmac.compare_digest(declared, hashlib.sha256(body).hexdigest()):
        raise SignatureError("InvalidSignatureException", "The body does not match its X-Amz-Content-SHA256.")
    signer_v4 = SigV4Auth(ReadOnlyCredentials(signer.access_key, secret, None), signer.service, signer.region)
    canonical = signer_v4.canonical_request(request)
    expected = signer_v4.signature(signer_v4.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected.encode(), signer.signature.encode()):
        raise SignatureError("SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided.")


GATEWAY_SECRET_ENV = "LOCKGATE_AWS_KEY_SECRET"


def gateway_secret() -> str | None:
    """The gateway's secret the AWS secret keys it issues are derived from (None: it issues none)."""
    return os.environ.get(GATEWAY_SECRET_ENV) or None


def issued_secret(access_key: str, gateway_secret: str) -> str:
    """The secret access key lockgate issued with `access_key`: derived from the gateway's
    own secret (HMAC-SHA256 of the key id), so no store holds it and anyone who reads the
    store cannot sign; the same on every worker and replica that has the gateway secret."""
    import base64
    import hashlib
    import hmac

    digest = hmac.new(gateway_secret.encode(), b"lockgate-aws-secret:" + access_key.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()[:40]
