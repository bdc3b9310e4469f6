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
