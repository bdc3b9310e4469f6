"""What agent frameworks send through lockgate's translations, with the official SDKs as
clients of a real `lockgate serve` and every provider played by the fake upstream:
Anthropic structured outputs served by OpenAI and Gemini models; the Responses API's
`item_reference`s to items lockgate issued (as the Vercel AI SDK sends them); schemas
Anthropic cannot enforce, made enforceable as its own SDKs make them; the Responses
object naming the model the client asked for; and the mock provider calling tools."""

from __future__ import annotations

import hashlib
import json

import anthropic
import jsonschema
import openai
import pydantic
import pytest

from lockgate.providers import mock
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


# -- the mock calls tools --------------------------------------------------------------------


CHAT_TOOLS = [
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}}}},
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "required": ["location", "days", "when"], "additionalProperties": False,
        "properties": {"location": {"type": "string", "minLength": 6}, "days": {"type": "integer", "minimum": 3, "maximum": 7},
                       "when": {"type": "string", "format": "date"}, "units": {"anyOf": [{"type": "null"}, {"type": "string", "enum": ["c", "f"]}]}}}}},
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
    history = ask + [{"role": "assistant", "content": None, "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
                     {"role": "tool", "tool_call_id": call_id, "content": "18C"}]
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
    after = ask + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]}, {"role": "tool", "tool_call_id": call.id, "content": "noon"}]
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


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"a": ZOD_INT}, "required": ["a"]},
    {"type": "object", "properties": {"xs": {"type": "array", "items": {"$ref": "#/$defs/X"}, "minItems": 2, "maxItems": 4}},
     "$defs": {"X": {"type": "object", "properties": {"when": {"type": "string", "format": "date-time"}, "n": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.5}}}}},
    {"type": "object", "properties": {"v": {"oneOf": [{"type": "string", "maxLength": 2}, {"type": "integer", "multipleOf": 5, "minimum": 11}]}}},
    {"type": "object", "properties": {"tags": {"type": ["array", "null"], "items": {"type": "string", "enum": ["x", "y"]}}, "k": {"const": 3}},
     "allOf": [{"properties": {"z": {"type": "boolean"}}, "required": ["z"]}]},
])
def test_mock_examples_are_valid_against_their_schema(schema):
    jsonschema.validate(mock.example(schema), schema, format_checker=jsonschema.FormatChecker())
