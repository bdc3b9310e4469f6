"""What agent frameworks send through lockgate's translations, with the official SDKs as
clients of a real `lockgate serve` and every provider played by the fake upstream:
Anthropic structured outputs served by OpenAI and Gemini models; the Responses API's
`item_reference`s to items lockgate issued (as the Vercel AI SDK sends them); schemas
Anthropic cannot enforce, made enforceable as its own SDKs make them; the Responses
object naming the model the client asked for; and the mock provider calling tools."""

from __future__ import annotations

import asyncio
import hashlib
import json

import anthropic
import jsonschema
import openai
import pydantic
import pytest

from lockgate.kernel.context import Identity, RequestContext
from lockgate.kernel.errors import GatewayError
from lockgate.kernel.store import open_store
from lockgate.kernel.store.memory import MemoryStore
from lockgate.providers import messages, mock, vertex
from lockgate.providers.anthropic import enforceable_schema
from lockgate.providers.base import Deployment
from lockgate.proxy.items import ResponseItems
from tests.conftest import SECRETS, start_gateway

KEY_A = "sk-agents-alice-KEY-0001"
KEY_B = "sk-agents-bob-KEY-0002"
CLAUDE = "claude-sonnet-4-5-20250929"  # the deployment's dated model, behind the name `claude`
# what zod's `.int()` puts in a JSON Schema: Anthropic refuses minimum/maximum
ZOD_INT = {"type": "integer", "minimum": -9007199254740991, "maximum": 9007199254740991}
WEATHER = {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"], "additionalProperties": False}
RESPONSES_TOOL = {"type": "function", "name": "get_weather", "description": "Weather in a city", "parameters": WEATHER}


class Person(pydantic.BaseModel):
    name: str
    age: int


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    url = fake.url
    config = {
        "models": [
            {"name": "gpt-4o-mini", "deployments": [{"provider": "openai", "model": "gpt-4o-mini", "base_url": url + "/v1", "api_key": SECRETS["openai"]}]},
            {"name": "gemini-flash", "deployments": [{"provider": "gemini", "model": "gemini-2.0-flash", "base_url": url, "api_key": SECRETS["gemini"]}]},
            {"name": "claude", "deployments": [{"provider": "anthropic", "model": CLAUDE, "base_url": url, "api_key": SECRETS["anthropic"]}]},
            {"name": "demo", "deployments": [{"provider": "mock"}]},
        ],
        "middleware": [
            {"auth": {"keys": [{"id": "alice", "sha256": sha(KEY_A), "user": "alice"}, {"id": "bob", "sha256": sha(KEY_B), "user": "bob"}]}},
            {"rewrite": {"aliases": {"sonnet": "claude"}}},
        ],
    }
    gateway = start_gateway(config, tmp_path_factory.mktemp("agents"))
    yield gateway
    gateway.stop()


@pytest.fixture
def client(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY_A, max_retries=0, timeout=20)


@pytest.fixture
def claude(gw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=KEY_A, max_retries=0, timeout=20)


# -- Anthropic structured outputs on OpenAI and Gemini models -------------------------------


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gemini-flash"])
def test_anthropic_structured_output_is_served_by_other_providers(claude, upstream, model):
    message = claude.messages.parse(model=model, max_tokens=200, output_format=Person, messages=[{"role": "user", "content": "Ada, 36"}])
    assert isinstance(message.parsed_output, Person), message.content
    sent = upstream.requests[-1].body
    if model == "gpt-4o-mini":
        fmt = sent["response_format"]
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
        assert set(fmt["json_schema"]["schema"]["properties"]) == {"name", "age"}
    else:
        config = sent["generationConfig"]
        assert config["responseMimeType"] == "application/json"
        assert config["responseSchema"]["properties"]["age"]["type"] == "INTEGER"


def test_anthropic_structured_output_streams(claude, upstream):
    with claude.messages.stream(model="gpt-4o-mini", max_tokens=200, output_format=Person, messages=[{"role": "user", "content": "Ada, 36"}]) as stream:
        final = stream.get_final_message()
    assert isinstance(final.parsed_output, Person)
    assert upstream.requests[-1].body["response_format"]["type"] == "json_schema"


def test_a_schema_openai_cannot_hold_strictly_is_sent_loose(claude, upstream):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "nickname": {"type": "string"}}, "required": ["name"]}
    message = claude.messages.create(model="gpt-4o-mini", max_tokens=200, output_config={"format": {"type": "json_schema", "schema": schema}},
                                     messages=[{"role": "user", "content": "Ada"}])
    jsonschema.validate(json.loads(message.content[0].text), schema)
    assert upstream.requests[-1].body["response_format"]["json_schema"] == {"name": "output", "schema": schema, "strict": False}


def test_a_bad_output_format_is_an_anthropic_shaped_400(claude, upstream):
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude.messages.create(
            model="gpt-4o-mini", max_tokens=50, output_config={"format": {"type": "json_object"}}, messages=[{"role": "user", "content": "x"}]
        )
    assert refused.value.body["error"]["type"] == "invalid_request_error" and "output_config.format" in refused.value.body["error"]["message"]
    assert upstream.requests == []


# -- item_reference to items lockgate issued ---------------------------------------------------


def first_step(client: openai.OpenAI, stream: bool, **extra) -> list:
    """Step 1 of an agent loop on a translated model: text, then a tool call."""
    if not stream:
        return list(client.responses.create(model="claude", input="weather in Paris?", tools=[RESPONSES_TOOL], **extra).output)
    with client.responses.stream(model="claude", input="weather in Paris?", tools=[RESPONSES_TOOL], **extra) as events:
        return list(events.get_final_response().output)


def second_step_input(output: list, reference_calls: bool = False) -> list:
    """Step 2 as the Vercel AI SDK sends it: the earlier text by reference, the call inline
    with its item id (older versions referenced the call too), then its result."""
    text, call = output
    call_item = {"type": "item_reference", "id": call.id} if reference_calls else {
        "type": "function_call", "id": call.id, "call_id": call.call_id, "name": call.name, "arguments": call.arguments}
    return [
        {"role": "user", "content": [{"type": "input_text", "text": "weather in Paris?"}]},
        {"type": "item_reference", "id": text.id},
        call_item,
        {"type": "function_call_output", "call_id": call.call_id, "output": "18C and sunny"},
    ]


@pytest.mark.parametrize(("stream", "reference_calls"), [(False, False), (True, False), (False, True)])
def test_item_references_to_lockgates_own_items_resolve(client, upstream, stream, reference_calls):
    upstream.set(CLAUDE, preamble="Let me check the weather.")
    output = first_step(client, stream)
    assert [item.type for item in output] == ["message", "function_call"]
    assert output[0].content[0].text == "Let me check the weather."
    second = client.responses.create(model="claude", tools=[RESPONSES_TOOL], input=second_step_input(output, reference_calls))
    assert second.output_text == "tool said: 18C and sunny"
    sent = upstream.requests[-1].body["messages"]
    call = output[1]
    assert sent == [
        {"role": "user", "content": [{"type": "text", "text": "weather in Paris?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me check the weather."},
                                          {"type": "tool_use", "id": call.call_id, "name": "get_weather", "input": {"location": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.call_id, "content": "18C and sunny"}]},
    ], "the upstream receives the whole earlier turn"


def assert_not_found(refused: openai.NotFoundError, item_id: str) -> None:
    error = refused.body
    assert error["type"] == "invalid_request_error" and error["param"] == "input"
    assert error["message"] == f"Item with id '{item_id}' not found."


def test_another_key_cannot_use_the_items(gw, client, upstream):
    upstream.set(CLAUDE, preamble="Let me check.")
    output = first_step(client, False)
    other = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY_B, max_retries=0, timeout=20)
    with pytest.raises(openai.NotFoundError) as refused:
        other.responses.create(model="claude", tools=[RESPONSES_TOOL], input=second_step_input(output))
    assert_not_found(refused.value, output[0].id)


@pytest.mark.parametrize("unkept", [{"extra_headers": {"x-litellm-enable-message-redaction": "true"}}, {"store": False}])
def test_incognito_and_unstored_answers_keep_nothing(client, upstream, unkept):
    upstream.set(CLAUDE, preamble="Let me check.")
    output = first_step(client, False, **unkept)
    with pytest.raises(openai.NotFoundError) as refused:
        client.responses.create(model="claude", tools=[RESPONSES_TOOL], input=second_step_input(output))
    assert_not_found(refused.value, output[0].id)


def test_an_unknown_item_is_answered_as_openai_does(client, upstream):
    with pytest.raises(openai.NotFoundError) as refused:
        client.responses.create(model="claude", input=[{"type": "item_reference", "id": "msg_never_issued"}, {"role": "user", "content": "hi"}])
    assert_not_found(refused.value, "msg_never_issued")
    assert upstream.requests == [], "nothing reached the upstream"


# -- schemas Anthropic cannot enforce ----------------------------------------------------------


def test_zod_integers_reach_anthropic_in_a_schema_it_enforces(client, upstream):
    schema = {"type": "object", "properties": {"count": ZOD_INT, "tags": {"type": "array", "items": {"type": "string", "minLength": 2}, "minItems": 2}},
              "required": ["count", "tags"], "additionalProperties": False}
    answer = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "count"}],
                                            response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(answer.choices[0].message.content), enforceable_schema(schema))
    sent = upstream.requests[-1].body["output_config"]["format"]["schema"]
    assert sent["properties"]["count"] == {"type": "integer", "description": "{minimum: -9007199254740991, maximum: 9007199254740991}"}
    assert sent["properties"]["tags"]["description"] == "{minItems: 2}"


def test_responses_text_format_and_strict_tools_reach_anthropic_enforceable(client, upstream):
    schema = {"type": "object", "properties": {"count": ZOD_INT}, "required": ["count"], "additionalProperties": False}
    response = client.responses.create(model="claude", input="count", text={"format": {"type": "json_schema", "name": "c", "schema": schema, "strict": True}})
    assert json.loads(response.output_text)["count"] == 1
    tool = {**RESPONSES_TOOL, "strict": True, "parameters": {**WEATHER, "properties": {"location": {"type": "string", "pattern": "^[A-Z]"}, "days": ZOD_INT},
                                                             "required": ["location", "days"]}}
    called = client.responses.create(model="claude", input="weather?", tools=[tool])
    assert called.output[0].type == "function_call"
    sent = upstream.requests[-1].body["tools"][0]
    assert sent["strict"] is True and sent["input_schema"]["properties"]["location"] == {"type": "string", "description": '{pattern: "^[A-Z]"}'}


# -- the model the client asked for ------------------------------------------------------------


@pytest.mark.parametrize("asked", ["claude", "sonnet"])
def test_responses_name_the_model_asked_for(client, upstream, asked):
    assert client.responses.create(model=asked, input="hi").model == asked
    with client.responses.stream(model=asked, input="hi") as stream:
        named = {event.response.model for event in stream if hasattr(event, "response")}
    assert named == {asked}, "created, in_progress and completed all name it"
    assert upstream.requests[-1].body["model"] == CLAUDE


# -- the mock calls tools --------------------------------------------------------------------


CHAT_TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}}},
    },
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "required": ["location", "days", "when"],
                "additionalProperties": False,
                "properties": {
                    "location": {"type": "string", "minLength": 6},
                    "days": {"type": "integer", "minimum": 3, "maximum": 7},
                    "when": {"type": "string", "format": "date"},
                    "units": {"anyOf": [{"type": "null"}, {"type": "string", "enum": ["c", "f"]}]},
                },
            },
        },
    },
]


def tool_schema(name: str) -> dict:
    return next(t["function"]["parameters"] for t in CHAT_TOOLS if t["function"]["name"] == name)


@pytest.mark.parametrize("stream", [False, True])
def test_mock_calls_the_tool_the_user_names_then_answers_with_its_result(client, stream):
    ask = [{"role": "user", "content": "what does get_weather say?"}]
    if stream:
        chunks = list(client.chat.completions.create(model="demo", messages=ask, tools=CHAT_TOOLS, stream=True))
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        name = next(c.choices[0].delta.tool_calls[0].function.name for c in chunks if c.choices and c.choices[0].delta.tool_calls)
        call_id = next(c.choices[0].delta.tool_calls[0].id for c in chunks if c.choices and c.choices[0].delta.tool_calls)
        arguments = "".join(c.choices[0].delta.tool_calls[0].function.arguments or "" for c in chunks if c.choices and c.choices[0].delta.tool_calls)
    else:
        answer = client.chat.completions.create(model="demo", messages=ask, tools=CHAT_TOOLS)
        call = answer.choices[0].message.tool_calls[0]
        finish, name, call_id, arguments = [answer.choices[0].finish_reason], call.function.name, call.id, call.function.arguments
    assert finish == ["tool_calls"] and name == "get_weather"
    jsonschema.validate(json.loads(arguments), tool_schema("get_weather"), format_checker=jsonschema.FormatChecker())
    history = ask + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "18C"},
    ]
    final = client.chat.completions.create(model="demo", messages=history, tools=CHAT_TOOLS)
    assert final.choices[0].finish_reason == "stop" and final.choices[0].message.content == "mock: get_weather returned 18C"


def test_mock_respects_tool_choice(client):
    ask = [{"role": "user", "content": "hello"}]
    text = client.chat.completions.create(model="demo", messages=ask, tools=CHAT_TOOLS, tool_choice="none")
    assert text.choices[0].message.content == "mock: hello" and not text.choices[0].message.tool_calls
    named = client.chat.completions.create(model="demo", messages=ask, tools=CHAT_TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert named.choices[0].message.tool_calls[0].function.name == "get_weather"
    first = client.chat.completions.create(model="demo", messages=ask, tools=CHAT_TOOLS)
    assert first.choices[0].message.tool_calls[0].function.name == "get_time", "the first tool when none is named"
    call = first.choices[0].message.tool_calls[0]
    after = ask + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": call.id, "content": "noon"},
    ]
    required = client.chat.completions.create(model="demo", messages=after, tools=CHAT_TOOLS, tool_choice="required")
    assert required.choices[0].finish_reason == "tool_calls", "required calls again, even after a result"
    plain = client.chat.completions.create(model="demo", messages=ask)
    assert plain.choices[0].message.content == "mock: hello", "without tools, the echo as before"


def test_mock_calls_tools_through_the_responses_and_messages_translations(client, claude):
    step = client.responses.create(model="demo", input="weather, get_weather please", tools=[{**RESPONSES_TOOL, "parameters": tool_schema("get_weather")}])
    call = step.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), tool_schema("get_weather"))
    done = client.responses.create(model="demo", tools=[RESPONSES_TOOL], input=[
        {"role": "user", "content": "weather, get_weather please"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "rain"}])
    assert done.output_text == "mock: get_weather returned rain"
    tools = [{"name": "get_weather", "input_schema": tool_schema("get_weather")}]
    with claude.messages.stream(model="demo", max_tokens=100, tools=tools, messages=[{"role": "user", "content": "weather?"}]) as stream:
        message = stream.get_final_message()
    use = message.content[0]
    assert message.stop_reason == "tool_use" and use.type == "tool_use" and use.name == "get_weather"
    jsonschema.validate(use.input, tool_schema("get_weather"))


# -- pure parts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": ZOD_INT}, "required": ["a"]},
        {
            "type": "object",
            "properties": {"xs": {"type": "array", "items": {"$ref": "#/$defs/X"}, "minItems": 2, "maxItems": 4}},
            "$defs": {
                "X": {
                    "type": "object",
                    "properties": {"when": {"type": "string", "format": "date-time"}, "n": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.5}},
                }
            },
        },
        {"type": "object", "properties": {"v": {"oneOf": [{"type": "string", "maxLength": 2}, {"type": "integer", "multipleOf": 5, "minimum": 11}]}}},
        {
            "type": "object",
            "properties": {"tags": {"type": ["array", "null"], "items": {"type": "string", "enum": ["x", "y"]}}, "k": {"const": 3}},
            "allOf": [{"properties": {"z": {"type": "boolean"}}, "required": ["z"]}],
        },
    ],
)
def test_mock_examples_are_valid_against_their_schema(schema):
    jsonschema.validate(mock.example(schema), schema, format_checker=jsonschema.FormatChecker())


def test_enforceable_schema_moves_what_anthropic_refuses_into_descriptions():
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "description": "A thing",
        "properties": {
            "n": {"type": "integer", "description": "How many", "minimum": 1, "exclusiveMaximum": 10},
            "when": {"type": "string", "format": "date-time"},
            "code": {"type": "string", "format": "hex", "maxLength": 4},
            "pick": {"oneOf": [{"$ref": "#/$defs/Choice"}, {"type": "null"}]},
            "few": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        },
        "required": ["n"],
        "additionalProperties": {"type": "string"},
        "$defs": {"Choice": {"type": "string", "enum": ["a", "b"], "default": "a"}},
    }
    assert enforceable_schema(schema) == {
        "$defs": {"Choice": {"type": "string", "enum": ["a", "b"], "description": '{default: "a"}'}},
        "type": "object",
        "description": "A thing",
        "properties": {
            "n": {"type": "integer", "description": "How many\n\n{minimum: 1, exclusiveMaximum: 10}"},
            "when": {"type": "string", "format": "date-time"},
            "code": {"type": "string", "description": '{format: "hex", maxLength: 4}'},
            "pick": {"anyOf": [{"$ref": "#/$defs/Choice"}, {"type": "null"}]},
            "few": {"type": "array", "items": {"type": "string"}, "minItems": 1, "description": "{maxItems: 3}"},
        },
        "additionalProperties": False,
        "required": ["n"],
    }
    assert enforceable_schema({"type": "string"}) == {"type": "string"} and enforceable_schema({}) == {}


def test_output_config_becomes_response_format():
    strict = Person.model_json_schema() | {"additionalProperties": False}
    chat = messages.to_chat(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "output_config": {"effort": "low", "format": {"type": "json_schema", "schema": strict}}}
    )
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": strict, "strict": True}}
    legacy = messages.to_chat({"model": "m", "messages": [], "output_format": {"type": "json_schema", "schema": {"type": "object", "properties": {}}}})
    assert legacy["response_format"]["json_schema"]["strict"] is False, "an object that is not closed cannot be strict at OpenAI"
    nested = {"type": "object", "properties": {"p": {"type": "object", "properties": {"q": {"type": "string"}}, "additionalProperties": False}},
              "required": ["p"], "additionalProperties": False}
    assert messages.strict_compatible(nested) is False, "q is optional"
    assert "response_format" not in messages.to_chat({"model": "m", "messages": [], "output_config": {"effort": "high"}})


async def test_kept_items_are_compact_and_under_the_callers_key(gw, client, upstream):
    upstream.set(CLAUDE, preamble="A private preamble.")
    text, call = first_step(client, False)
    store = open_store({"backend": "disk", "path": str(gw.log_path.parent / "state")})
    try:
        kept_text = await store.get(f"items:alice:{text.id}")
        kept_call = await store.get(f"items:alice:{call.id}")
        assert await store.get(f"items:bob:{text.id}") is None
    finally:
        await store.close()
    assert json.loads(kept_text) == {"type": "message", "role": "assistant", "content": "A private preamble."}
    assert json.loads(kept_call) == {"type": "function_call", "call_id": call.call_id, "name": "get_weather", "arguments": call.arguments}
    assert "A private preamble." not in gw.log()


def test_claude_on_vertex_gets_the_enforceable_schema_too():
    dep = Deployment("v", "vertex", "claude-sonnet-4-5@20250929", options={"project": "p", "location": "us-east5"})
    body = {"model": "c", "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": {"type": "object", "properties": {"n": ZOD_INT}}}}}
    sent = json.loads(vertex.ADAPTER.chat_request(dep, body).body)
    assert sent["output_config"]["format"]["schema"]["properties"]["n"] == enforceable_schema(ZOD_INT)
    assert "minimum" not in sent["output_config"]["format"]["schema"]["properties"]["n"]


class FlakyStore(MemoryStore):
    """A store that fails every call while `down`."""

    down = True

    async def get(self, key: str) -> bytes | None:
        if self.down:
            raise ConnectionRefusedError("store down")
        return await super().get(key)

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        if self.down:
            raise ConnectionRefusedError("store down")
        await super().set(key, value, ttl_s)


async def test_a_store_that_fails_costs_no_answer_and_never_passes_for_not_found():
    store = FlakyStore()
    items = ResponseItems(store)
    ctx = RequestContext("r1")
    ctx.identity = Identity(key="alice")
    issued = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "hi", "annotations": []}],
    }
    await items.keep(ctx, [issued])  # does not raise: the answer goes out
    with pytest.raises(GatewayError) as unavailable:
        await items.recall(ctx, ["msg_1"])
    assert unavailable.value.status == 503 and unavailable.value.body["error"]["code"] == "store_unavailable"
    store.down = False
    for _ in range(200):  # the backlog writes the item once the store answers again
        if await items.recall(ctx, ["msg_1"]):
            break
        await asyncio.sleep(0.05)
    assert await items.recall(ctx, ["msg_1"]) == {"msg_1": {"type": "message", "role": "assistant", "content": "hi"}}
