"""The provider secrets the gateway holds, and their removal from whatever an upstream
sends back: an upstream that echoes the `Authorization` header it received in an error
message must not hand the gateway's key to the client."""

from __future__ import annotations

from collections.abc import Iterable

from lockgate.providers.base import Deployment

REDACTED = b"[redacted]"
MIN_SECRET_CHARS = 8  # shorter values (`1`, `true`) are settings, not secrets, and would mangle text


class Secrets:
    __slots__ = ("values",)

    def __init__(self, deployments: Iterable[Deployment]) -> None:
        found: set[bytes] = set()
        for dep in deployments:
            candidates = [dep.api_key or "", *dep.headers.values(), *(str(v) for k, v in dep.options.items() if "secret" in k or "key" in k or "token" in k)]
            for value in candidates:
                for part in (value, value.split(" ", 1)[-1]):  # `Bearer xyz` in a header: xyz alone too
                    if len(part) >= MIN_SECRET_CHARS:
                        found.add(part.encode())
        # longest first, so a secret that contains another is taken out whole
        self.values = tuple(sorted(found, key=len, reverse=True))

    def scrub(self, data: bytes) -> bytes:
        for value in self.values:
            if value in data:
                data = data.replace(value, REDACTED)
        return data

    def scrub_text(self, text: str) -> str:
        if not self.values:
            return text
        return self.scrub(text.encode("utf-8", "surrogatepass")).decode("utf-8", "replace")
