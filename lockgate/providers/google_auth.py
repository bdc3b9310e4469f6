"""OAuth access tokens for Vertex AI, through google-auth.

google-auth is Google's own implementation of every credential kind Vertex users
have: a service-account key file (a JWT signed with its private key, traded at the
file's `token_uri`), and Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS,
gcloud's user credentials, workload identity federation, and the GCE/GKE metadata
server that GKE workload identity answers on). This module only decides when to ask.

One `GoogleToken` serves every deployment that names the same credentials, and its
token serves every request until it is close to expiry: it is refreshed
`REFRESH_MARGIN_S` before then, by one task while the others wait for the same
refresh. The refresh blocks (google-auth's HTTP transport is synchronous), so it
runs in a thread. The token is never logged and never part of a repr.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING

import google.auth.exceptions

from lockgate.providers.base import CredentialsError

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

# google-auth's service-account signer and HTTP transport cost ~28 MB to import: they
# are imported on the first refresh, so a gateway without vertex deployments never loads them.

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
REFRESH_MARGIN_S = 300


class GoogleToken:
    def __init__(self, credentials_path: str | None = None) -> None:
        self._path = credentials_path
        self._credentials: Credentials | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"GoogleToken({self._path or 'application default credentials'})"

    def _fresh(self) -> str | None:
        creds = self._credentials
        if creds is None or not creds.token:
            return None
        expiry = creds.expiry
        if expiry is not None:
            remaining = expiry.replace(tzinfo=dt.UTC) - dt.datetime.now(dt.UTC)
            if remaining.total_seconds() < REFRESH_MARGIN_S:
                return None
        return creds.token

    async def token(self) -> str:
        token = self._fresh()
        if token is not None:
            return token
        async with self._lock:
            token = self._fresh()  # another request may have refreshed it meanwhile
            if token is not None:
                return token
            try:
                return await asyncio.to_thread(self._refresh)
            except google.auth.exceptions.GoogleAuthError as exc:
                raise CredentialsError(f"Google credentials could not be refreshed: {type(exc).__name__}: {first_line(exc)}") from None
            except OSError as exc:
                raise CredentialsError(f"Google credentials could not be read: {exc.strerror or type(exc).__name__}") from None

    def _refresh(self) -> str:
        import google.auth
        import google.auth.transport.requests
        from google.oauth2 import service_account

        if self._credentials is None:
            if self._path:
                self._credentials = service_account.Credentials.from_service_account_file(self._path, scopes=SCOPES)
            else:
                self._credentials, _ = google.auth.default(scopes=SCOPES)
        self._credentials.refresh(google.auth.transport.requests.Request())
        return self._credentials.token


def first_line(exc: Exception) -> str:
    """The error's gist: google-auth's message holds the token endpoint's answer (never
    the key or the signed assertion); its first line is enough."""
    message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    lines = message.strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
