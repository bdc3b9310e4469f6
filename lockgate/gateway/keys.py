"""Runtime keys: API keys made and revoked over the admin API (`POST`, `GET /admin/keys`,
`DELETE /admin/keys/{id}`; the console and `lockgate keys create|list|revoke` use it)
rather than written into auth.yaml.

A created key is shown once, in the answer that created it. The store keeps only its
sha256, as auth.yaml does, next to the fields a key of the file has:

    runtime-key:{sha256 hex}   the key's entry (JSON): id, sha256, user, team, tier, models, mcp,
                               expires, metadata, budget_usd, budget_period, rpm, tpm,
                               passthrough, created
    runtime-key-id:{id}        the sha256 hex: an id is taken once (the store's `add`), and
                               a revocation finds the entry by it

Every worker and replica reads the same store, and auth (middleware/auth.py) asks it on
every request made with a key auth.yaml does not hold (one read, like the claims the
throttle and budget make), so a key works everywhere as soon as its creation is
answered, and a revocation holds everywhere from the next request on. auth.yaml stays the source of truth: an
id the file names cannot be created (409), and a runtime key whose id the file gained
later is refused. A key's own `budget_usd` / `rpm` / `tpm` need the budget / throttle
middleware mounted (creating one without is a 400, never a limit that silently does
nothing); `models` and `expires` are auth's, as for the file's keys. Listings never
carry a secret or its hash.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import string
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from lockgate.gateway.admin import admin_only
from lockgate.kernel.context import load_json
from lockgate.kernel.errors import GatewayError, bad_request, send_error, send_json
from lockgate.kernel.logs import get_logger
from lockgate.kernel.parsing import ConfigError
from lockgate.kernel.store import Store, guard
from lockgate.kernel.store.guard import StoreUnavailable
from lockgate.middleware.auth import (
    LIMIT_KEYS,
    MASTER_ID,
    RUNTIME_AWS,
    RUNTIME_ENTRY,
    RUNTIME_ID,
    AuthPolicy,
    BodyChecker,
    Key,
    new_key,
    parse_key,
    runtime_keys,
)
from lockgate.providers.aws_auth import GATEWAY_SECRET_ENV, gateway_secret, issued_secret

ADMIN_TIMEOUT_S = 2.0
FIELDS = ("id", "user", "team", "tier", "models", "mcp", "expires", "metadata", *LIMIT_KEYS, "passthrough")
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MAX_TEXT = 128
log = get_logger("lockgate.keys")


class RuntimeKeys:
    """The admin API's side of runtime keys: make, revoke and list them. `auth_policy`
    is the auth.yaml in force (its keys are listed, and their ids cannot be taken)."""

    def __init__(self, store: Store, auth_policy: Callable[[], AuthPolicy | None]) -> None:
        self.store = store
        self.auth_policy = auth_policy
        self.lookup = runtime_keys(store)

    def file_ids(self) -> set[str]:
        policy = self.auth_policy()
        return set(policy.ids) if policy is not None else set()

    async def create(self, body: dict) -> dict:
        """Stores a new key; returns its listing entry with the key itself under `key`
        (and, asked `aws: true`, an AWS access key pair for SigV4 clients)."""
        fields = validate(body)
        aws = fields.pop("aws", False)
        seed = gateway_secret()
        if aws and seed is None:
            message = f"`aws` keys are derived from the gateway's secret: set {GATEWAY_SECRET_ENV} (the same on every replica) and restart."
            raise bad_request(message, "aws", "aws_keys_disabled")
        key_id = fields["id"]
        if key_id == MASTER_ID or key_id in self.file_ids():
            raise conflict(f"The key id `{key_id}` is " + ("reserved for the master key." if key_id == MASTER_ID else "defined in auth.yaml."))
        secret, entry = new_key(key_id)
        digest = entry["sha256"]
        record = {**fields, "sha256": digest, "created": now_iso()}
        if aws:
            record["aws_access_key_id"] = access_key_id()
        if not await self._call(self.store.add(RUNTIME_ID + key_id, digest.encode())):
            raise conflict(f"A runtime key with the id `{key_id}` exists already.")
        try:
            if aws and not await self._call(self.store.add(RUNTIME_AWS + record["aws_access_key_id"], digest.encode())):
                raise GatewayError(500, "An AWS access key id was drawn twice; try again.", "api_error", "key_collision")
            await self._call(self.store.set(RUNTIME_ENTRY + digest, orjson.dumps(record)))
        except GatewayError:
            await self._call(self.store.delete(RUNTIME_ID + key_id))
            raise
        log.info("runtime_key_created", key=key_id)
        created = {**listing(record, "runtime"), "key": secret}
        if aws:
            assert seed is not None
            created["aws_secret_access_key"] = issued_secret(record["aws_access_key_id"], seed)
        return created

    async def revoke(self, key_id: str) -> bool:
        """False when no runtime key has this id."""
        digest = await self._call(self.store.get(RUNTIME_ID + key_id))
        if digest is None:
            return False
        raw = await self._call(self.store.get(RUNTIME_ENTRY + digest.decode()))
        record = orjson.loads(raw) if raw else {}
        await self._call(self.store.delete(RUNTIME_ENTRY + digest.decode()))
        if isinstance(record, dict) and isinstance(record.get("aws_access_key_id"), str):
            await self._call(self.store.delete(RUNTIME_AWS + record["aws_access_key_id"]))
        await self._call(self.store.delete(RUNTIME_ID + key_id))
        self.lookup.forget(bytes.fromhex(digest.decode()))
        log.info("runtime_key_revoked", key=key_id)
        return True

    async def listing(self) -> list[dict]:
        """Every key, the file's and the runtime ones, without secrets or hashes."""
        policy = self.auth_policy()
        rows = [file_listing(key) for key in policy.keys.values()] if policy is not None else []
        file_ids = {row["id"] for row in rows}
        names = await self._call(self.store.keys(RUNTIME_ENTRY))
        for name in names:
            raw = await self._call(self.store.get(name))
            if raw is None:
                continue  # revoked meanwhile
            record = orjson.loads(raw)
            row = listing(record, "runtime")
            if row["id"] in file_ids:
                row["status"] = "shadowed"
            rows.append(row)
        return sorted(rows, key=lambda r: (r["source"] != "runtime", r["id"]))

    async def _call(self, work: Any) -> Any:
        try:
            return await guard.call(self.store, work, ADMIN_TIMEOUT_S)
        except StoreUnavailable:
            raise guard.unavailable() from None



def access_key_id() -> str:
    """An AWS-style access key id: `LGAK` and 16 random upper-case letters and digits."""
    return "LGAK" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(16))


def conflict(message: str) -> GatewayError:
    return GatewayError(409, message, "invalid_request_error", "key_exists", "id")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def validate(body: dict) -> dict:
    """The fields of a new key, checked as auth.yaml's are; a 400 naming every problem."""
    check = BodyChecker("request body")
    check.unknown(body, {*FIELDS, "aws"}, "a key")
    if not isinstance(body.get("aws", False), bool):
        check.fail(body, "aws", "aws must be true or false")
    key_id = body.get("id")
    if not isinstance(key_id, str) or not ID_PATTERN.fullmatch(key_id):
        check.fail(body, "id", "id must be 1-64 letters, digits and . _ @ - (starting with a letter or digit)")
    for name in ("user", "team", "tier"):
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or not value or len(value) > MAX_TEXT or not value.isprintable()):
            check.fail(body, name, f"{name} must be a printable string of at most {MAX_TEXT} characters")
    models = body.get("models")
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()] or None
    passthrough = body.get("passthrough")
    if isinstance(passthrough, str):
        passthrough = [p.strip() for p in passthrough.split(",") if p.strip()] or None
    fields = {name: body[name] for name in FIELDS if body.get(name) not in (None, "")}
    if models is not None:
        fields["models"] = models
    if passthrough is not None:
        fields["passthrough"] = passthrough
    if "metadata" in fields and len(orjson.dumps(fields["metadata"])) > 4096:
        check.fail(body, "metadata", "metadata must be at most 4 KB of JSON")
    key = None
    try:
        # an id already found wanting is stood in for, so every other problem is reported too
        key = parse_key(check, {**fields, "id": key_id if isinstance(key_id, str) and key_id else "id", "sha256": "0" * 64}, None, None, None)
    except ConfigError as exc:
        check.problems.extend(exc.problems)
    if key is not None:
        fields.update(key.limits.fields() if key.limits else {})  # as parsed: numbers, and the default period
        if key.expires is not None:
            if key.expires <= dt.datetime.now(dt.UTC):
                check.fail(body, "expires", "expires is in the past")
            fields["expires"] = key.expires.isoformat()
    if check.problems:
        raise bad_request("; ".join(p.removeprefix("request body: ") for p in check.problems), check_param(check.problems), "invalid_key")
    if body.get("aws") is True:
        fields["aws"] = True
    return fields


def check_param(problems: list[str]) -> str | None:
    for name in FIELDS:
        if any(f" {name} " in p or p.startswith(f"request body: {name} ") for p in problems):
            return name
    return None


def listing(record: dict, source: str) -> dict:
    row = {name: record.get(name) for name in FIELDS}
    row["user"] = row["user"] or row["id"]
    if record.get("aws_access_key_id"):
        row["aws_access_key_id"] = record["aws_access_key_id"]
    row.update(source=source, created=record.get("created"), status=status(record.get("expires")))
    return row


def file_listing(key: Key) -> dict:
    row: dict[str, Any] = {
        "id": key.id,
        "user": key.user,
        "team": key.team,
        "tier": key.tier,
        "models": list(key.models) if key.models is not None else None,
        "mcp": {server: "*" if tools is None else list(tools) for server, tools in key.mcp.items()} if key.mcp is not None else None,
        "expires": key.expires.isoformat() if key.expires else None,
        "metadata": dict(key.metadata),
    }
    limits = key.limits.fields() if key.limits else {}
    row.update({name: limits.get(name) for name in LIMIT_KEYS})
    row["passthrough"] = sorted(key.passthrough) or None
    row.update(source="file", created=None, status=status(row["expires"]))
    return row


def status(expires: str | None) -> str:
    if expires and dt.datetime.fromisoformat(expires) <= dt.datetime.now(dt.UTC):
        return "expired"
    return "active"


class KeysAdmin:
    """`/admin/keys`: the HTTP side."""

    def __init__(self, runtime: RuntimeKeys, mounted: Callable[[], Iterable[str]]) -> None:
        self.runtime = runtime
        self.mounted = mounted  # the names of the middlewares gateway.yaml mounts

    @admin_only
    async def list(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, {"object": "list", "data": await self.runtime.listing()})

    @admin_only
    async def create(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = await load_json(scope, receive)
        mounted = set(self.mounted())
        for field, middleware in (("budget_usd", "budget"), ("rpm", "throttle"), ("tpm", "throttle")):
            if ctx.body.get(field) is not None and middleware not in mounted:
                message = f"`{field}` needs the {middleware} middleware, which gateway.yaml does not mount: the limit would do nothing."
                return await send_error(send, bad_request(message, field, "middleware_not_mounted"))
        await send_json(send, 201, await self.runtime.create(ctx.body))

    @admin_only
    async def revoke(self, scope: Scope, receive: Receive, send: Send) -> None:
        key_id = scope["path_params"]["key_id"]
        if key_id in self.runtime.file_ids():
            message = f"The key `{key_id}` is defined in auth.yaml: remove it there (the file is reloaded by itself)."
            return await send_error(send, GatewayError(409, message, "invalid_request_error", "key_in_file", "id"))
        if not await self.runtime.revoke(key_id):
            return await send_error(send, GatewayError(404, f"No runtime key has the id `{key_id}`.", "invalid_request_error", "key_not_found", "id"))
        await send_json(send, 200, {"id": key_id, "revoked": True})
