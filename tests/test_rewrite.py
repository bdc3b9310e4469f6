"""Rewrite: aliases, rules on identity, headers and conditions, client hints trusted only
when the policy says so and stripped before the upstream, sticky A/B splits, and a
condition language that refuses anything but comparisons."""

from __future__ import annotations

import builtins
from collections import Counter

import httpx
import pytest
import yaml
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

import lockgate.middleware.rewrite as rewrite_module
from lockgate.kernel.context import Identity, RequestContext, get_context
from lockgate.kernel.parsing import ConfigError
from lockgate.middleware import expression
from lockgate.middleware.rewrite import Names, RewriteMiddleware, parse_policy, rewrite
from tests.conftest import start_gateway

MESSAGES = [{"role": "user", "content": "hi"}]
IDENTITIES = {
    "alice-key": {"key": "alice-key", "user": "alice", "team": "ml-research", "tier": "premium", "metadata": {"env": "prod"}},
    "bob-key": {"key": "bob-key", "user": "bob", "team": "sales", "tier": "basic", "metadata": {"env": "dev"}},
}


class FakeAuth:
    """Stands in for auth: the bearer token names an identity."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            token = dict(scope["headers"]).get(b"authorization", b"").decode().removeprefix("Bearer ")
            if token in IDENTITIES:
                get_context(scope).identity = Identity(**IDENTITIES[token])
        await self.app(scope, receive, send)


def own_routes() -> list[Route]:
    async def chat(request):
        ctx = request.scope["lockgate"]
        return JSONResponse(
            {"body": await request.json(), "served": ctx.attempt.model_served, "requested": ctx.model_requested, "rule": ctx.rewrite_rule}
        )

    async def models(request):
        return JSONResponse({"data": [{"id": "gpt-4"}]})

    async def other(request):
        return JSONResponse({"body": await request.json()})

    async def home(request):
        return PlainTextResponse("home")

    return [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models),
        Route("/other", other, methods=["POST"]),
        Route("/", home),
    ]


def client(policy: dict, *, auth: bool = False, kind: str = "starlette") -> httpx.AsyncClient:
    app = Starlette(routes=own_routes()) if kind == "starlette" else FastAPI(routes=own_routes())
    app.add_middleware(RewriteMiddleware, policy=policy)
    if auth:
        app.add_middleware(FakeAuth)  # added last: outermost, as auth is in the gateway
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def chat(c: httpx.AsyncClient, model: str | None = "gpt-4o", headers: dict | None = None, **extra) -> dict:
    body = {"messages": MESSAGES, **extra}
    if model is not None:
        body["model"] = model
    response = await c.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def load_error(tmp_path, policy: dict | str) -> str:
    path = tmp_path / "rewrite.yaml"
    path.write_text(policy if isinstance(policy, str) else yaml.safe_dump(policy, sort_keys=False))
    with pytest.raises(ConfigError) as info:
        RewriteMiddleware(None, policy=str(path))
    return "\n".join(info.value.problems)


# -- aliases --------------------------------------------------------------------------
async def test_aliases_apply_once_and_keep_what_was_asked():
    async with client({"aliases": {"gpt-4": "gpt-4o", "fast": "gpt-4o-mini"}}) as c:
        answer = await chat(c, "gpt-4")
        assert answer["body"]["model"] == "gpt-4o"
        assert answer["served"] == "gpt-4o" and answer["requested"] == "gpt-4"
        assert (await chat(c, "fast"))["body"]["model"] == "gpt-4o-mini"
        untouched = await chat(c, "claude")
        assert untouched["body"]["model"] == "claude" and untouched["served"] is None


def test_alias_loops_and_chains_are_refused_with_their_line(tmp_path):
    problems = load_error(tmp_path, "aliases:\n  a: b\n  b: a\n")
    assert f"{tmp_path / 'rewrite.yaml'}:2: alias loop: a -> b -> a" in problems
    assert problems.count("alias loop") == 1, "one loop, one message"
    assert "rewrite.yaml:2: alias loop: x -> x" in load_error(tmp_path, "aliases:\n  x: x\n")
    chain = load_error(tmp_path, "aliases:\n  a: b\n  b: c\n")
    assert "rewrite.yaml:2:" in chain and "point 'a' at 'c'" in chain


# -- when: identity, headers, request fields -------------------------------------------
async def test_when_matches_identity_fields_with_lists_and_globs():
    policy = {
        "rules": [
            {"id": "prod-eng", "when": {"team": ["eng", "ml-*"], "metadata.env": "prod"}, "model": "big"},
            {"when": {"tier": "basic", "user": "b*"}, "model": "small"},
            {"when": {"metadata": {"env": "dev"}}, "model": "never"},
        ]
    }
    async with client(policy, auth=True) as c:
        alice = await chat(c, headers={"authorization": "Bearer alice-key"})
        assert alice["body"]["model"] == "big" and alice["rule"] == "prod-eng"
        bob = await chat(c, headers={"authorization": "Bearer bob-key"})
        assert bob["body"]["model"] == "small" and bob["rule"] == 1, "first match wins; the rule is its index"
        anonymous = await chat(c)
        assert anonymous["body"]["model"] == "gpt-4o" and anonymous["rule"] is None


async def test_when_on_headers_routes_the_seed_tasks():
    policy = {
        "rules": [
            {"when": {"header": {"x-lockgate-task": "simple_qa"}}, "model": "gpt-3.5-turbo"},
            {"when": {"header.X-Lockgate-Task": ["complex_*", "analysis"]}, "model": "gpt-4"},
        ]
    }
    async with client(policy) as c:
        assert (await chat(c, "gpt-4o", {"x-lockgate-task": "simple_qa"}))["body"]["model"] == "gpt-3.5-turbo"
        assert (await chat(c, "gpt-4o", {"x-lockgate-task": "complex_analysis"}))["body"]["model"] == "gpt-4"
        assert (await chat(c, "gpt-4o", {"x-lockgate-task": "chit-chat"}))["body"]["model"] == "gpt-4o"
        assert (await chat(c, "gpt-4o"))["body"]["model"] == "gpt-4o"


async def test_when_on_the_model_after_aliases_and_request_fields():
    policy = {
        "aliases": {"gpt-4": "gpt-4o"},
        "rules": [
            {"when": {"model": "gpt-4o*", "stream": True}, "model": "streamer"},
            {"when": {"model": "gpt-4o"}, "model": "routed"},
        ],
    }
    async with client(policy) as c:
        assert (await chat(c, "gpt-4", stream=True))["body"]["model"] == "streamer"
        assert (await chat(c, "gpt-4"))["body"]["model"] == "routed", "the rule saw the aliased name"
        assert (await chat(c, "gpt-4o-mini"))["body"]["model"] == "gpt-4o-mini"


# -- conditions, exactly as users write them ----------------------------------------------
CONDITIONS = [
    # condition, (headers, body extra, hour) that match, and that do not
    ("user_tier == 'premium'", ({"authorization": "Bearer alice-key"}, {}, 12), ({"authorization": "Bearer bob-key"}, {}, 12)),
    ("task_type == 'summarization'", ({"x-lockgate-task-type": "summarization"}, {}, 12), ({"x-lockgate-task-type": "qa"}, {}, 12)),
    ("hour >= 9 && hour <= 17", ({}, {}, 9), ({}, {}, 18)),
    ("hour < 9 || hour > 17", ({}, {}, 23), ({}, {}, 17)),
    ("input_length > 4000", ({}, {"messages": [{"role": "user", "content": "word " * 4000}]}, 12), ({}, {}, 12)),
    ("task_complexity == 'low'", ({}, {"task_complexity": "low"}, 12), ({}, {"task_complexity": "high"}, 12)),
    ("test_mode == true", ({"x-lockgate-test-mode": "true"}, {}, 12), ({"x-lockgate-test-mode": "false"}, {}, 12)),
    ("test_mode == true", ({}, {"test_mode": True}, 12), ({}, {}, 12)),
]


@pytest.mark.parametrize("condition, hit, miss", CONDITIONS, ids=[c[0] for c in CONDITIONS])
async def test_conditions_work_as_written(monkeypatch, condition, hit, miss):
    policy = {"trust_client_fields": True, "rules": [{"condition": condition, "model": "routed"}]}
    async with client(policy, auth=True) as c:
        for (headers, extra, hour), expected in ((hit, "routed"), (miss, "gpt-4o")):
            monkeypatch.setattr(rewrite_module, "utc_hour", lambda hour=hour: hour)
            answer = await chat(c, "gpt-4o", headers, **extra)
            assert answer["body"]["model"] == expected, (condition, headers, extra, hour)


def test_hour_is_the_utc_hour():
    import time

    assert rewrite_module.utc_hour() == time.gmtime().tm_hour


async def test_names_headers_metadata_and_operators():
    policy = {
        "rules": [
            {"condition": "header.x-region in ['eu', 'uk'] and not (metadata.env == 'dev')", "model": "eu-model"},
            {"condition": "team not in ['sales'] && key != null && !(user == 'carol')", "model": "member"},
            {"condition": '"sales" in team', "model": "sales"},
        ]
    }
    async with client(policy, auth=True) as c:
        alice = {"authorization": "Bearer alice-key"}
        assert (await chat(c, headers={**alice, "x-region": "uk"}))["body"]["model"] == "eu-model"
        assert (await chat(c, headers={**alice, "x-region": "us"}))["body"]["model"] == "member"
        bob = {"authorization": "Bearer bob-key"}
        assert (await chat(c, headers={**bob, "x-region": "eu"}))["body"]["model"] == "sales", "bob's metadata.env is dev"
        assert (await chat(c, headers={"x-region": "us"}))["body"]["model"] == "gpt-4o", "anonymous has no key"


def test_mismatched_types_compare_false_never_raise():
    names = Names(trust_client_fields=True)
    facts = {"hour": 12, "input_length": 10, "tier": None, "flag": "yes", "count": "7"}
    cases = {
        "None < 3": False,
        "'a' < 1": False,
        "tier < 3": False,
        "tier >= 'a'": False,
        "hour < 'noon'": False,
        "hour != 'noon'": True,
        "input_length == true": False,
        "flag == true": False,
        "count > 5": True,
        "count == 7": True,
        "1 in 'abc'": False,
        "hour in 12": False,
        "[1, 2] == [1, 2]": True,
        "missing > 3 or missing < 3": False,
    }
    for text, expected in cases.items():
        assert expression.parse(text, names.resolve).test(facts) is expected, text


def test_unknown_names_are_a_load_error_without_trust(tmp_path):
    problems = load_error(tmp_path, "rules:\n  - model: a\n    condition: \"task_type == 'summarization'\"\n")
    assert f"{tmp_path / 'rewrite.yaml'}:3:" in problems and "unknown name 'task_type'" in problems
    problems = load_error(tmp_path, "rules:\n  - when: {task_type: qa}\n    model: a\n")
    assert "rewrite.yaml:2:" in problems and "unknown name 'task_type'" in problems
    with_trust = parse_policy({"trust_client_fields": True, "rules": [{"condition": "task_type == 'qa'", "model": "a"}]}, "x")
    assert with_trust.client_fields == {"task_type"}


async def test_client_fields_are_read_in_order_and_stripped_before_the_upstream():
    policy = {
        "trust_client_fields": True,
        "rules": [{"id": "summaries", "condition": "task_type == 'summarization'", "model": "summarizer"}],
    }
    async with client(policy) as c:
        by_header = await chat(c, headers={"x-lockgate-task_type": "summarization"})
        by_metadata = await chat(c, metadata={"task_type": "summarization", "trace": "t1"})
        by_field = await chat(c, task_type="summarization", think=False)
        header_first = await chat(c, headers={"x-lockgate-task-type": "qa"}, task_type="summarization")
        no_match = await chat(c, task_type="qa")
    assert [a["body"]["model"] for a in (by_header, by_metadata, by_field, header_first, no_match)] == [
        "summarizer", "summarizer", "summarizer", "gpt-4o", "gpt-4o"
    ]
    assert by_field["rule"] == "summaries"
    assert "task_type" not in by_field["body"] and "task_type" not in no_match["body"], "the hint never goes upstream"
    assert by_field["body"]["think"] is False, "fields the API knows stay"
    assert by_metadata["body"]["metadata"] == {"task_type": "summarization", "trace": "t1"}, "the API's own metadata field stays"


async def test_without_trust_client_fields_are_neither_read_nor_stripped():
    policy = {"rules": [{"condition": "header.x-lockgate-task == 'qa'", "model": "qa-model"}]}
    async with client(policy) as c:
        answer = await chat(c, task_type="summarization")
    assert answer["body"]["task_type"] == "summarization" and answer["body"]["model"] == "gpt-4o"


async def test_identity_wins_over_what_the_client_claims():
    policy = {
        "trust_client_fields": True,
        "rules": [
            {"condition": "user_tier == 'premium'", "model": "premium"},
            {"when": {"user": "alice"}, "model": "alice-model"},
            {"condition": "task_type == 'x'", "model": "x"},
        ],
    }
    async with client(policy, auth=True) as c:
        claims = {"authorization": "Bearer bob-key", "x-lockgate-tier": "premium", "x-lockgate-user-tier": "premium", "x-lockgate-user": "alice"}
        answer = await chat(c, headers=claims, tier="premium", user_tier="premium", user="alice", metadata={"tier": "premium"})
    assert answer["body"]["model"] == "gpt-4o", "bob is basic and bob, whatever he says"
    assert answer["body"]["user"] == "alice", "identity names are never stripped as hints"


# -- split ------------------------------------------------------------------------------
def split_target(policy, user: str) -> str:
    ctx = RequestContext("r")
    ctx.body = {"model": "gpt-4o", "messages": MESSAGES}
    ctx.body_loaded = True
    ctx.identity = Identity(key="k", user=user)
    rewrite(policy, {"type": "http", "headers": []}, ctx)
    return ctx.body["model"]


def test_split_proportions_and_stickiness():
    policy = parse_policy({"rules": [{"when": {"model": "gpt-4o*"}, "split": {"gpt-4o": 90, "claude-sonnet": 10}}]}, "x")
    users = [f"user-{i}" for i in range(1000)]
    first = {u: split_target(policy, u) for u in users}
    counts = Counter(first.values())
    assert 870 <= counts["gpt-4o"] <= 930 and counts["gpt-4o"] + counts["claude-sonnet"] == 1000, counts
    assert all(split_target(policy, u) == first[u] for u in users[:200]), "a user stays on one side"
    uneven = parse_policy({"rules": [{"id": "ab", "split": {"a": 1, "b": 3}}]}, "x")
    counts = Counter(split_target(uneven, u) for u in users)
    assert 220 <= counts["a"] <= 280, counts
    salted = parse_policy({"rules": [{"id": "other", "split": {"a": 1, "b": 3}}]}, "x")
    assert [split_target(salted, u) for u in users] != [split_target(uneven, u) for u in users], "each rule splits users its own way"


async def test_split_is_sticky_through_the_middleware():
    policy = {"rules": [{"split": {"a": 50, "b": 50}}]}
    async with client(policy, auth=True) as c:
        for token in IDENTITIES:
            seen = {(await chat(c, headers={"authorization": f"Bearer {token}"}))["body"]["model"] for _ in range(5)}
            assert len(seen) == 1 and seen <= {"a", "b"}


# -- the language refuses code ----------------------------------------------------------
MALICIOUS = {
    "__import__('os')": "function calls are not allowed",
    "().__class__": "unexpected ')'",
    "user.upper()": "function calls are not allowed",
    "user.upper": "attribute access is not allowed",
    "open('x')": "function calls are not allowed",
    "tier.__class__.__mro__": "names starting with '_'",
    "'a'.join(['b'])": "attribute access is not allowed",
    "header['x']": "subscripts are not allowed",
    "[1, 2][0]": "subscripts are not allowed",
    "lambda: 1": "`lambda` is not part of the condition language",
    "f'{user}' == 'x'": "f-strings",
    "tier == 'a' if True else 'b'": "`if` is not part of the condition language",
    "tier = 'premium'": "compare with ==",
    "import os": "`import` is not part of the condition language",
    "tier == 'premium'; open('x')": "unexpected character ';'",
}


@pytest.mark.parametrize("condition", list(MALICIOUS))
def test_code_is_refused_at_load_with_its_line(tmp_path, condition):
    policy = "trust_client_fields: true\nrules:\n  - model: a\n    condition: " + yaml.safe_dump(condition).strip().removesuffix("...").strip() + "\n"
    problems = load_error(tmp_path, policy)
    assert problems.startswith(f"{tmp_path / 'rewrite.yaml'}:4: condition"), problems
    assert MALICIOUS[condition] in problems, problems


def test_no_python_evaluation_is_involved(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("Python evaluation used")

    for name in ("eval", "exec", "compile", "__import__"):
        monkeypatch.setattr(builtins, name, forbidden)
    names = Names(trust_client_fields=True)
    condition = expression.parse("(user_tier == 'premium' || hour > 17) && task_type not in ['a', \"b\"] and test_mode == True", names.resolve)
    assert condition.test({"tier": "premium", "hour": 3, "task_type": "c", "test_mode": "TRUE"}) is True


def test_size_and_depth_are_bounded():
    names = Names(trust_client_fields=True)
    deep = "(" * expression.MAX_DEPTH + "hour" + ")" * expression.MAX_DEPTH
    assert expression.parse(deep, names.resolve).test({"hour": 1}) is True
    with pytest.raises(expression.ExpressionError, match="nests deeper"):
        expression.parse("(" + deep + ")", names.resolve)
    with pytest.raises(expression.ExpressionError, match="nests deeper"):
        expression.parse("not " * 40 + "hour", names.resolve)
    with pytest.raises(expression.ExpressionError, match="at most"):
        expression.parse("hour == 1 or " * 400 + "hour == 2", names.resolve)
    long_chain = " or ".join(f"hour == {i}" for i in range(200))  # flat, so evaluation cannot recurse deeply
    assert expression.parse(long_chain, names.resolve).test({"hour": 199}) is True
    with pytest.raises(expression.ExpressionError, match="comparisons do not chain"):
        expression.parse("1 < hour < 3", names.resolve)


def test_policy_shape_errors_name_their_lines(tmp_path):
    text = "rules:\n  - model: a\n    split: {b: 1}\n  - when: [tier]\n    model: a\n  - split: {a: 0}\n  - model: a\n    frobnicate: 1\n"
    problems = load_error(tmp_path, text)
    assert "rewrite.yaml:2: a rule needs exactly one of" in problems
    assert "rewrite.yaml:4: when must be a mapping" in problems
    assert "rewrite.yaml:6: a split needs at least one model" in problems
    assert "rewrite.yaml:8: unknown key 'frobnicate'" in problems


# -- mounted into other apps --------------------------------------------------------------
@pytest.mark.parametrize("kind", ["starlette", "fastapi"])
async def test_mounted_into_an_existing_app(kind):
    policy = {"aliases": {"gpt-4": "gpt-4o"}, "rules": [{"model": "everything-goes-here"}]}
    async with client(policy, kind=kind) as c:
        assert (await chat(c, "gpt-4"))["body"]["model"] == "everything-goes-here"
        no_model = await chat(c, None)
        assert "model" not in no_model["body"] and no_model["rule"] is None
        other = await c.post("/other", json={"model": "gpt-4"})
        assert other.json() == {"body": {"model": "gpt-4"}}, "the app's own routes are untouched"
        assert (await c.get("/v1/models")).json() == {"data": [{"id": "gpt-4"}]}
        assert (await c.get("/")).text == "home"


# -- end to end ------------------------------------------------------------------------------
def test_gateway_serves_the_rewritten_model(fake, upstream, tmp_path):
    policy = tmp_path / "rewrite.yaml"
    policy.write_text(
        yaml.safe_dump(
            {
                "trust_client_fields": True,
                "aliases": {"gpt-4": "big"},
                "rules": [
                    {"when": {"header": {"x-lockgate-task": "simple_qa"}}, "model": "small"},
                    {"condition": "task_type == 'summarization'", "model": "small"},
                ],
            }
        )
    )
    base = fake.url + "/v1"
    gw = start_gateway(
        {
            "models": [
                {"name": "big", "deployments": [{"provider": "openai", "model": "rw-big-upstream", "base_url": base}]},
                {"name": "small", "deployments": [{"provider": "openai", "model": "rw-small-upstream", "base_url": base}]},
            ],
            "middleware": [{"rewrite": str(policy)}],
        },
        tmp_path,
    )
    try:
        def post(headers=None, **extra):
            return httpx.post(gw.url + "/v1/chat/completions", json={"model": "gpt-4", "messages": MESSAGES, **extra}, headers=headers, timeout=20)

        routed = post({"x-lockgate-task": "simple_qa"})
        assert routed.status_code == 200, routed.text
        assert routed.headers["x-lockgate-model"] == "small"
        aliased = post()
        assert aliased.status_code == 200 and aliased.headers["x-lockgate-model"] == "big"
        hinted = post(task_type="summarization")
        assert hinted.status_code == 200 and hinted.headers["x-lockgate-model"] == "small"
        sent = [r.body for r in upstream.seen("/chat/completions")]
        assert [b["model"] for b in sent] == ["rw-small-upstream", "rw-big-upstream", "rw-small-upstream"]
        assert "task_type" not in sent[2], "the routing hint was stripped before the upstream"
        assert all(not k.startswith("x-lockgate") for r in upstream.requests for k in r.headers)
    finally:
        gw.stop()


def test_aliases_are_listed_next_to_their_targets(fake, tmp_path):
    """Onyx discovers models from /v1/model/info: an alias must be pickable there."""
    from tests.conftest import start_gateway

    policy = tmp_path / "rewrite.yaml"
    policy.write_text(yaml.safe_dump({"aliases": {"onyx-default": "big", "onyx-fast": "small"}}))
    models = [
        {"name": "big", "deployments": [{"provider": "anthropic", "model": "claude-3-5-sonnet-20241022", "base_url": fake.url}]},
        {"name": "small", "deployments": [{"provider": "mock"}]},
    ]
    gw = start_gateway({"models": models, "middleware": [{"rewrite": str(policy)}]}, tmp_path)
    try:
        ids = [m["id"] for m in httpx.get(gw.url + "/v1/models").json()["data"]]
        assert ids == ["big", "small", "onyx-default", "onyx-fast"]
        info = {e["model_name"]: e for e in httpx.get(gw.url + "/model/info").json()["data"]}
        assert info["onyx-default"]["litellm_params"] == info["big"]["litellm_params"]
        assert info["onyx-default"]["model_info"]["max_input_tokens"] == 200_000
        assert info["onyx-default"]["model_info"]["id"] == "onyx-default"
        answer = httpx.post(gw.url + "/v1/chat/completions", json={"model": "onyx-fast", "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200 and answer.headers["x-lockgate-model"] == "small"
    finally:
        gw.stop()
