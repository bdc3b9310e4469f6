"""Model aliases and routing rules: which model a request is really served by.

rewrite.yaml:

    trust_client_fields: false   # may rules read what the client says about its request
                                 # (x-lockgate-<name> headers, the body's `metadata`, extra body fields)?
    aliases:                     # name -> name, applied first and once (a loop or a chain is refused)
      gpt-4: gpt-4o
      fast: gpt-4o-mini
    rules:                       # in order; the first that matches decides
      - id: premium              # optional: names the rule in logs and salts its split (default: its index)
        when: {tier: premium}    # every field must match: a value, a glob, or a list of them
        model: gpt-4o            # serve this model instead ...
      - when: {header: {x-lockgate-task: simple_qa}}
        model: gpt-3.5-turbo
      - condition: "user_tier == 'basic' && hour >= 9 && hour <= 17"   # see middleware/expression.py
        model: gpt-4o-mini
      - when: {model: "gpt-4o*"}
        split: {gpt-4o: 90, claude-sonnet: 10}   # ... or one of these, by weight (any total), sticky per user

A rule may have `when`, `condition`, both (both must hold) or neither (always matches).

An allow-list holds for the model actually served: when auth admitted the caller with a
key limited to some models, a rule whose model (or, for a split, whose every side) the
key may not use does not match for that caller, and the next rule is tried; a split
picks only among the sides the key may use. An alias whose target the key may not use
is refused (403 `model_not_allowed`), as the proxy would refuse it.

Names that `when` keys and conditions read:
- `key`, `user`, `team`, `tier` (also `user_tier`), `metadata.<name>`: the caller's identity,
  as auth established it (without auth: `anonymous`, or with trust_client_fields the user
  claimed in `x-lockgate-user` / the body's `user`, as throttle and budget read it)
- `model`: the model asked for, after aliases; `hour`: the hour of day, UTC, 0-23;
  `input_length`: the estimated prompt tokens
- `header.<name>`: a request header (`when` also takes `header: {<name>: value}`)
- request fields the API defines (`stream`, `temperature`, `max_tokens`, `tools`, `think`...)
- any other name (`task_type`, `task_complexity`, `test_mode`) is a client field, and only
  with `trust_client_fields: true`: read from the `x-lockgate-<name>` header (`_` may be
  written `-`), then the body's `metadata.<name>`, then a top-level body field `<name>`.
  Without trust such a name is an error when the policy loads. Identity names always
  come from the identity: a client cannot claim a tier.

Client fields the policy reads are removed from the top level of the body before it goes
upstream, since strict providers reject fields they do not know. A split hashes the user
with the rule's id, so a user stays on one side for as long as the rule keeps its id and
weights. Requests without a model and routes that reach no model pass untouched.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lockgate.kernel.context import Identity, RequestContext, get_context, header, model_request, refuse, route_path
from lockgate.kernel.errors import GatewayError
from lockgate.kernel.parsing import Checker, ConfigError
from lockgate.kernel.policy import Policy
from lockgate.kernel.websocket import refusals
from lockgate.middleware import expression
from lockgate.middleware.expression import Expression, ExpressionError
from lockgate.middleware.identity import identity_of, matches
from lockgate.middleware.paths import DEFAULT as DEFAULT_PATHS
from lockgate.middleware.paths import Paths, parse_paths
from lockgate.providers.tokens import prompt_tokens

IDENTITY_NAMES = {"key": "key", "user": "user", "team": "team", "tier": "tier", "user_tier": "tier"}
COMPUTED_NAMES = frozenset({"model", "hour", "input_length"})
# fields the APIs define: they describe the request rather than claim anything about the
# caller, so rules read them without trust, and they are never stripped
REQUEST_FIELDS = frozenset(
    {
        "stream", "temperature", "top_p", "top_k", "n", "max_tokens", "max_completion_tokens", "max_output_tokens",
        "presence_penalty", "frequency_penalty", "seed", "stop", "logprobs", "top_logprobs", "service_tier", "store",
        "parallel_tool_calls", "reasoning_effort", "tool_choice", "response_format", "tools", "modalities",
        "instructions", "previous_response_id", "truncation", "background", "dimensions", "encoding_format", "think",
    }
)
CLIENT_FIELD = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
HEADER_NAME = re.compile(r"[A-Za-z0-9_-]+")
RULE_KEYS = {"id", "when", "condition", "model", "split"}


def utc_hour() -> int:
    return time.gmtime().tm_hour


@dataclass(frozen=True, slots=True)
class Rule:
    label: str | int  # its `id`, else its index
    when: Mapping[str, Any]  # canonical name -> value, glob or list
    condition: Expression | None
    model: str | None
    split: tuple[tuple[str, float], ...]  # (model, cumulative weight)

    def applies(self, facts: Facts) -> bool:
        return matches(self.when, facts) and (self.condition is None or self.condition.test(facts))

    def target(self, facts: Facts, allows: Callable[[str], bool]) -> str | None:
        """The model this rule serves the caller, None when the caller may use none of them."""
        if self.model is not None:
            return self.model if allows(self.model) else None
        split = self.split
        if not all(allows(model) for model, _ in split):
            weights = [(model, edge - (split[i - 1][1] if i else 0.0)) for i, (model, edge) in enumerate(split)]
            kept = [(model, weight) for model, weight in weights if allows(model) and weight > 0]
            if not kept:
                return None
            split = tuple((model, sum(w for _, w in kept[: i + 1])) for i, (model, _) in enumerate(kept))
        # blake2b, not hash(): the same user lands on the same side in every process
        digest = hashlib.blake2b(f"{self.label}\0{facts.get('user')}".encode(), digest_size=8).digest()
        point = int.from_bytes(digest, "big") / 2**64 * split[-1][1]
        return next((model for model, edge in split if point < edge), split[-1][0])


@dataclass(frozen=True, slots=True)
class RewritePolicy:
    aliases: Mapping[str, str]
    rules: tuple[Rule, ...]
    trust_client_fields: bool = False
    client_fields: frozenset[str] = frozenset()  # stripped from the body
    paths: Paths = DEFAULT_PATHS


class Names:
    """Turns a name a policy uses into its canonical form, refusing those it may not read."""

    def __init__(self, trust_client_fields: bool) -> None:
        self.trust = trust_client_fields
        self.client_fields: set[str] = set()

    def resolve(self, name: str, column: int = 0) -> str:
        if name in IDENTITY_NAMES:
            return IDENTITY_NAMES[name]
        if name in COMPUTED_NAMES or name in REQUEST_FIELDS:
            return name
        root, _, rest = name.partition(".")
        if root in ("header", "metadata"):
            if not rest or "." in rest or (root == "header" and not HEADER_NAME.fullmatch(rest)):
                raise ExpressionError(f"write {root}.<name>, not {name!r}", column)
            return f"header.{rest.lower()}" if root == "header" else name
        if rest:
            raise ExpressionError(f"attribute access is not allowed: {name!r} (only header.<name> and metadata.<name>)", column)
        if not CLIENT_FIELD.fullmatch(name):
            raise ExpressionError(f"{name!r} is not a name a rule can read", column)
        if not self.trust:
            raise ExpressionError(f"unknown name {name!r} (fields the client sends are read only with trust_client_fields: true)", column)
        self.client_fields.add(name)
        return name


def parse_policy(raw: Any, source: str) -> RewritePolicy:
    check = Checker(source)
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}:1: the rewrite policy must be a mapping with `aliases:` and/or `rules:`"])
    check.unknown(raw, {"trust_client_fields", "aliases", "rules", "paths"}, "the rewrite policy")
    trust = raw.get("trust_client_fields", False)
    if not isinstance(trust, bool):
        check.fail(raw, "trust_client_fields", "trust_client_fields must be true or false")
        trust = False
    aliases = parse_aliases(check, check.mapping(raw, "aliases", "aliases"))
    names = Names(trust)
    nodes = raw.get("rules") or []
    if not isinstance(nodes, list):
        check.fail(raw, "rules", "`rules:` must be a list")
        nodes = []
    rules: list[Rule] = []
    for index, node in enumerate(nodes):
        if not isinstance(node, dict):
            check.fail(nodes, index, "each rule must be a mapping")
            continue
        rule = parse_rule(check, node, index, names)
        if rule is not None:
            if any(r.label == rule.label for r in rules):
                check.fail(node, "id", f"two rules have the id {rule.label!r}")
            rules.append(rule)
    paths = parse_paths(check, raw)
    if check.problems:
        raise ConfigError(check.problems)
    return RewritePolicy(aliases, tuple(rules), trust, frozenset(names.client_fields), paths)


def parse_aliases(check: Checker, node: dict[str, Any]) -> dict[str, str]:
    aliases: dict[str, str] = {}
    for name, target in node.items():
        if not isinstance(target, str) or not target:
            check.fail(node, name, f"alias {name!r} must name a model")
            continue
        aliases[str(name)] = target
    reported: set[frozenset[str]] = set()
    for name, target in aliases.items():
        if target not in aliases:
            continue
        path = [name, target]
        while path[-1] in aliases and aliases[path[-1]] not in path:
            path.append(aliases[path[-1]])
        if path[-1] in aliases:
            loop = frozenset(path)
            if loop not in reported:
                reported.add(loop)
                check.fail(node, name, "alias loop: " + " -> ".join(path + [aliases[path[-1]]]))
        else:
            check.fail(node, name, f"alias target {target!r} is itself an alias (aliases apply once): point {name!r} at {path[-1]!r}")
    return aliases


def parse_rule(check: Checker, node: dict[str, Any], index: int, names: Names) -> Rule | None:
    check.unknown(node, RULE_KEYS, "a rule")
    label = check.string(node, "id", index) if "id" in node else index
    when = parse_when(check, node, names)
    condition = None
    if "condition" in node:
        text = node["condition"]
        try:
            condition = expression.parse(text, names.resolve)
        except ExpressionError as exc:
            shown = text if not isinstance(text, str) or len(text) <= 80 else text[:77] + "..."
            check.fail(node, "condition", f"condition {shown!r}: {exc}")
    if ("model" in node) == ("split" in node):
        check.fail(node, None, "a rule needs exactly one of `model:` or `split:`")
        return None
    if "model" in node:
        model = check.string(node, "model")
        if not model:
            check.fail(node, "model", "model must name a model")
        return Rule(label, when, condition, model, ())
    return Rule(label, when, condition, None, parse_split(check, node))


def parse_when(check: Checker, node: dict[str, Any], names: Names) -> dict[str, Any]:
    spec = node.get("when")
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        check.fail(node, "when", "when must be a mapping of names to values")
        return {}
    flat: dict[str, Any] = {}
    entries = []
    for key, wanted in spec.items():
        if key in ("header", "metadata") and isinstance(wanted, dict):
            entries += [(f"{key}.{sub}", value, wanted, sub) for sub, value in wanted.items()]
        else:
            entries.append((str(key), wanted, spec, key))
    for name, wanted, where, key in entries:
        try:
            canonical = names.resolve(name)
        except ExpressionError as exc:
            check.fail(where, key, f"when: {exc.message}")
            continue
        options = wanted if isinstance(wanted, list) else [wanted]
        if any(isinstance(option, (dict, list)) for option in options):
            check.fail(where, key, f"when: {name} takes a value, a glob or a list of them")
            continue
        flat[canonical] = tuple(options) if isinstance(wanted, list) else wanted
    return flat


def parse_split(check: Checker, node: dict[str, Any]) -> tuple[tuple[str, float], ...]:
    weights = check.mapping(node, "split", "split")
    edges: list[tuple[str, float]] = []
    total = 0.0
    for model, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            check.fail(weights, model, f"the weight of {model!r} must be a number of at least 0")
            continue
        total += weight
        edges.append((str(model), total))
    if total <= 0:
        check.fail(node, "split", "a split needs at least one model with a weight above 0")
    return tuple(edges)


class Facts:
    """One request as rules see it. Each fact is worked out the first time a rule asks,
    so a policy that never reads `input_length` never counts tokens."""

    __slots__ = ("scope", "ctx", "trust", "who", "known")

    def __init__(self, scope: Scope, ctx: RequestContext, model: str, trust: bool) -> None:
        self.scope = scope
        self.ctx = ctx
        self.trust = trust
        self.who: Identity | None = None
        self.known: dict[str, Any] = {"model": model}

    def get(self, name: str) -> Any:
        if name in self.known:
            return self.known[name]
        value = self.known[name] = self._find(name)
        return value

    def _find(self, name: str) -> Any:
        body = self.ctx.body
        if name in IDENTITY_NAMES or name.startswith("metadata."):
            if self.who is None:
                self.who = identity_of(self.scope, self.ctx, self.trust)
            if name.startswith("metadata."):
                return self.who.metadata.get(name[9:])
            return self.who.facts().get(name)
        if name == "hour":
            return utc_hour()
        if name == "input_length":
            return prompt_tokens(body)
        if name.startswith("header."):
            return header(self.scope, name[7:].encode("latin-1"))
        if name in REQUEST_FIELDS:
            return body.get(name)
        return self._client_field(name)

    def _client_field(self, name: str) -> Any:
        for spelling in dict.fromkeys((name.lower(), name.lower().replace("_", "-"))):
            value = header(self.scope, b"x-lockgate-" + spelling.encode())
            if value is not None:
                return value
        metadata = self.ctx.body.get("metadata")
        if isinstance(metadata, dict) and name in metadata:
            return metadata[name]
        return self.ctx.body.get(name)


def rewrite(policy: RewritePolicy, scope: Scope, ctx: RequestContext) -> None:
    """Applies the alias and the first matching rule to ctx.body, and strips the
    client's routing hints. Raises the 403 for an alias the caller may not be served."""
    body = ctx.body
    asked = body.get("model")
    if not isinstance(asked, str):
        return
    model = policy.aliases.get(asked, asked)
    if model != asked and not ctx.allows(model):
        raise GatewayError(403, f"This API key may not use the model `{model}` (what `{asked}` stands for).", "invalid_request_error", "model_not_allowed",
                           "model")
    facts = Facts(scope, ctx, model, policy.trust_client_fields)
    for rule in policy.rules:
        if rule.applies(facts):
            target = rule.target(facts, ctx.allows)
            if target is None:
                continue  # a model this caller may not use: the rule is not for them
            model = target
            ctx.rewrite_rule = rule.label
            break
    changed = False
    for name in policy.client_fields:
        if name in body:
            del body[name]
            changed = True
    if model != asked:
        body["model"] = model
        ctx.attempt.model_served = model  # what the app inside is asked to serve (the proxy's word, when it is lockgate's)
        changed = True
    if changed:
        ctx.mark_changed()


class RewriteMiddleware:
    """`store` is accepted like every lockgate middleware's; rewriting keeps no state."""

    def __init__(self, app: ASGIApp, policy: Any, store: Any = None) -> None:
        self.app = app
        self.policy = Policy("rewrite", policy, parse_policy)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        send = refusals(scope, send)  # a realtime session's model is rewritten at its handshake
        self.policy.ensure_watching()
        policy = self.policy.current
        if scope.get("method") == "GET" and route_path(scope) in LISTING_PATHS:
            await self.app(scope, receive, AliasListing(policy, scope).wrap(send))
            return
        alias = retrieved_alias(scope, policy)
        if alias is not None:
            await alias_retrieval(self.app, scope, receive, send, alias, policy.aliases[alias])
            return
        if (not policy.aliases and not policy.rules) or not policy.paths.match(scope):
            await self.app(scope, receive, send)
            return
        ctx, inner_receive = await model_request(scope, receive)
        if ctx is not None:
            try:
                rewrite(policy, scope, ctx)
            except GatewayError as exc:
                await refuse(ctx, send, exc, [(b"x-request-id", ctx.request_id.encode("latin-1"))])
                return
        await self.app(scope, inner_receive, send)


LISTING_PATHS = frozenset({"/v1/models", "/models", "/v1/model/info", "/model/info"})
RETRIEVAL_PREFIXES = ("/v1/models/", "/models/")


def retrieved_alias(scope: Scope, policy: RewritePolicy) -> str | None:
    """The alias a `GET /v1/models/{name}` asks for, if it names one."""
    if scope.get("method") != "GET" or not policy.aliases:
        return None
    path = route_path(scope)
    prefix = next((p for p in RETRIEVAL_PREFIXES if path.startswith(p)), None)
    name = path[len(prefix) :] if prefix else None
    return name if name in policy.aliases else None


async def alias_retrieval(app: ASGIApp, scope: Scope, receive: Receive, send: Send, alias: str, target: str) -> None:
    """An alias is retrieved as the model it stands for, under its own name; a caller whose
    key may not use the alias gets the 404 an unknown model gets."""
    ctx = get_context(scope)
    if not ctx.allows(alias):
        error = GatewayError(404, f"The model `{alias}` does not exist or you do not have access to it.", "invalid_request_error", "model_not_found", "model")
        await refuse(ctx, send, error, [(b"x-request-id", ctx.request_id.encode("latin-1"))])
        return
    path = scope["path"]
    inner_path = path[: len(path) - len(alias)] + target
    inner = {**scope, "path": inner_path, "raw_path": inner_path.encode(), "path_params": {}}
    start: Message | None = None
    parts: list[bytes] = []

    async def renamed(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            return
        parts.append(message.get("body", b""))
        if message.get("more_body", False) or start is None:
            return
        body = b"".join(parts)
        if start["status"] == 200:
            answer = orjson.loads(body)
            body = orjson.dumps({**answer, "id": alias})
        headers = [(k, v) for k, v in start.get("headers", ()) if k != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    await app(inner, receive, renamed)


class AliasListing:
    """Adds each alias to the model lists (`/v1/models`, and `/v1/model/info`, which
    Onyx discovers models from) next to the model it stands for, so a client can pick
    an alias like any model. An alias is listed only where its target is: the list was
    already filtered to what the caller's key may use."""

    def __init__(self, policy: RewritePolicy, scope: Scope) -> None:
        self.policy = policy
        self.scope = scope
        self.start: Message | None = None
        self.parts: list[bytes] = []

    def wrap(self, send: Send) -> Send:
        if not self.policy.aliases:
            return send

        async def listing(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.start = message
                return
            if message["type"] != "http.response.body" or self.start is None:
                await send(message)
                return
            self.parts.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(self.parts)
            if self.start["status"] == 200:
                body = self._with_aliases(body)
            headers = [(k, v) for k, v in self.start.get("headers", ()) if k != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**self.start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        return listing

    def _with_aliases(self, body: bytes) -> bytes:
        try:
            listing = orjson.loads(body)
            entries = listing["data"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return body
        info = route_path(self.scope).endswith("/model/info")
        by_name = {(e.get("model_name") if info else e.get("id")): e for e in entries if isinstance(e, dict)}
        ctx = get_context(self.scope)
        for alias, target in self.policy.aliases.items():
            if alias in by_name or target not in by_name or not ctx.allows(alias):
                continue
            entry = dict(by_name[target])
            if info:
                entry["model_name"] = alias
                entry["model_info"] = {**entry.get("model_info", {}), "id": alias}
            else:
                entry["id"] = alias
            entries.append(entry)
        return orjson.dumps(listing)
