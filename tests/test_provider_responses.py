"""The Responses API: translation to and from chat (pure functions), and the fake
upstream's native /v1/responses checked with the official openai SDK."""

from __future__ import annotations

import httpx
import openai
import orjson
import pydantic
import pytest
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent

from lockgate.providers import responses
from lockgate.providers.base import UnsupportedRequest, chunk, usage_chunk, usage_dict
from lockgate.providers.responses import ResponsesStream, UnknownItem, from_chat, referenced_ids, to_chat
from lockgate.providers.sse import SSEDecoder
from tests.fakes.upstream import FakeUpstream, count_tokens

EVENT = pydantic.TypeAdapter(ResponseStreamEvent)
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather now",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    "strict": True,
}


# -- request translation -------------------------------------------------------------


def test_instructions_and_string_input_become_system_and_user_messages() -> None:
    chat = to_chat({"model": "claude-sonnet-4", "instructions": "Be brief.", "input": "hello"})
    assert chat == {"model": "claude-sonnet-4", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]}


def test_message_items_and_content_parts() -> None:
    chat = to_chat(
        {
            "model": "m",
            "input": [
                {"role": "developer", "content": "Answer in French."},
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "what is this?"},
                        {"type": "input_image", "image_url": "https://x/cat.png", "detail": "low"},
                        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
                    ],
                },
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Un chat.", "annotations": []}]},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]},
                {"role": "system", "content": [{"type": "input_text", "text": "sys"}]},
            ],
        }
    )
    assert chat["messages"] == [
        {"role": "system", "content": "Answer in French."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "auto"}},
            ],
        },
        {"role": "assistant", "content": "Un chat."},
        {"role": "assistant", "content": "I can't."},
        {"role": "system", "content": [{"type": "text", "text": "sys"}]},
    ]


def test_input_file_data_becomes_a_chat_file_part() -> None:
    part = {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,QUJD"}
    chat = to_chat({"model": "m", "input": [{"role": "user", "content": [part]}]})
    assert chat["messages"][0]["content"] == [{"type": "file", "file": {"file_data": "data:application/pdf;base64,QUJD", "filename": "a.pdf"}}]


@pytest.mark.parametrize(
    "part",
    [
        {"type": "input_image", "file_id": "file-123", "detail": "auto"},
        {"type": "input_file", "file_id": "file-123"},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    ],
)
def test_parts_needing_openai_storage_or_unknown_are_refused(part: dict) -> None:
    with pytest.raises(UnsupportedRequest) as err:
        to_chat({"model": "m", "input": [{"role": "user", "content": [part]}]})
    assert err.value.param == "input"
    assert part["type"] in err.value.message


def test_function_calls_merge_into_the_assistant_turn_and_outputs_become_tool_messages() -> None:
    chat = to_chat(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": "weather in Paris and Rome?"},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
                {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "get_weather", "arguments": '{"location":"Paris"}', "status": "completed"},
                {"type": "function_call", "call_id": "call_b", "name": "get_weather", "arguments": '{"location":"Rome"}'},
                {"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
                {"type": "function_call_output", "call_id": "call_b", "output": [{"type": "input_text", "text": "rain"}]},
                {"type": "function_call", "call_id": "call_c", "name": "get_weather", "arguments": "{}"},
            ],
        }
    )
    call = lambda cid, args: {"id": cid, "type": "function", "function": {"name": "get_weather", "arguments": args}}  # noqa: E731
    assert chat["messages"] == [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [call("call_a", '{"location":"Paris"}'), call("call_b", '{"location":"Rome"}')]},
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_b", "content": "rain"},
        {"role": "assistant", "content": None, "tool_calls": [call("call_c", "{}")]},
    ]


def test_item_references_resolve_to_kept_items_and_unknown_ones_are_named() -> None:
    kept = {"msg_1": {"type": "message", "role": "assistant", "content": "Checking."}}
    body = {"model": "m", "input": [{"role": "user", "content": "hi"}, {"type": "item_reference", "id": "msg_1"},
                                     {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "f", "arguments": "{}"}]}
    assert referenced_ids(body) == ["msg_1"]
    assert to_chat(body, kept)["messages"][1] == {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    with pytest.raises(UnknownItem) as unknown:
        to_chat(body)
    assert unknown.value.item_id == "msg_1"
    with pytest.raises(UnsupportedRequest, match="item_reference"):
        to_chat({"model": "m", "input": [{"type": "item_reference"}]})


def test_function_tools_become_chat_tools() -> None:
    chat = to_chat({"model": "m", "input": "hi", "tools": [WEATHER, {"type": "function", "name": "noop", "parameters": None, "strict": None}]})
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER["parameters"], "strict": True}},
        {"type": "function", "function": {"name": "noop"}},
    ]


@pytest.mark.parametrize(
    "tool", [{"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs_1"]}, {"type": "code_interpreter", "container": {"type": "auto"}}]
)
def test_built_in_tools_are_refused_by_name(tool: dict) -> None:
    with pytest.raises(UnsupportedRequest) as err:
        to_chat({"model": "m", "input": "hi", "tools": [WEATHER, tool]})
    assert tool["type"] in err.value.message and "function tools" in err.value.message
    assert err.value.param == "tools"


def test_tool_choice() -> None:
    assert to_chat({"model": "m", "input": "x", "tool_choice": "required"})["tool_choice"] == "required"
    forced = to_chat({"model": "m", "input": "x", "tool_choice": {"type": "function", "name": "get_weather"}})
    assert forced["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    with pytest.raises(UnsupportedRequest):
        to_chat({"model": "m", "input": "x", "tool_choice": {"type": "web_search_preview"}})


def test_settings_map_and_unknown_fields_are_dropped() -> None:
    chat = to_chat(
        {
            "model": "gemini-2.5-pro",
            "input": "x",
            "max_output_tokens": 50,
            "temperature": 0.2,
            "top_p": 0.9,
            "parallel_tool_calls": False,
            "user": "u1",
            "safety_identifier": "sid",
            "reasoning": {"effort": "low"},
            "store": True,
            "include": ["reasoning.encrypted_content"],
            "metadata": {"a": "b"},
            "truncation": "auto",
            "made_up": 1,
        }
    )
    assert chat == {
        "model": "gemini-2.5-pro",
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 50,
        "temperature": 0.2,
        "top_p": 0.9,
        "parallel_tool_calls": False,
        "user": "u1",
        "safety_identifier": "sid",
        "reasoning_effort": "low",
    }


def test_stream_asks_for_usage() -> None:
    chat = to_chat({"model": "m", "input": "x", "stream": True})
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert "stream" not in to_chat({"model": "m", "input": "x", "stream": False})


def test_text_format_becomes_response_format() -> None:
    assert "response_format" not in to_chat({"model": "m", "input": "x", "text": {"format": {"type": "text"}}})
    assert to_chat({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}})["response_format"] == {"type": "json_object"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}
    assert to_chat({"model": "m", "input": "x", "text": {"format": fmt}})["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "thing", "schema": schema, "strict": True},
    }


@pytest.mark.parametrize("field,value", [("previous_response_id", "resp_1"), ("background", True), ("conversation", "conv_1"), ("prompt", {"id": "pmpt_1"})])
def test_stateful_features_are_refused_with_the_field_named(field: str, value: object) -> None:
    with pytest.raises(UnsupportedRequest) as err:
        to_chat({"model": "m", "input": "x", field: value})
    assert err.value.param == field
    assert "statelessly" in err.value.message or "store" in err.value.message or "OpenAI" in err.value.message


# -- response translation ------------------------------------------------------------


def completion(message: dict, finish: str = "stop", usage: dict | None = None) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "claude-sonnet-4",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish, "logprobs": None}],
        "usage": usage or usage_dict(12, 3),
    }


def test_text_answer_is_a_valid_response() -> None:
    request = {
        "model": "claude-sonnet-4",
        "instructions": "Be brief.",
        "input": "hi",
        "temperature": 0.3,
        "max_output_tokens": 99,
        "metadata": {"k": "v"},
        "tools": [WEATHER],
    }
    data = from_chat(completion({"content": "Hello there"}, usage=usage_dict(12, 3, cached=4)), request)
    response = Response.model_validate(data)
    assert response.output_text == "Hello there"
    assert data["id"].startswith("resp_") and data["object"] == "response" and data["status"] == "completed"
    assert data["created_at"] == 1700000000 and data["completed_at"] >= data["created_at"]
    assert data["output"][0]["id"].startswith("msg_") and data["output"][0]["status"] == "completed"
    assert data["output"][0]["content"][0] == {"type": "output_text", "text": "Hello there", "annotations": [], "logprobs": []}
    assert data["usage"] == {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 15,
    }
    assert (data["instructions"], data["temperature"], data["max_output_tokens"], data["metadata"]) == ("Be brief.", 0.3, 99, {"k": "v"})
    assert data["tools"] == [WEATHER] and data["tool_choice"] == "auto" and data["error"] is None and data["store"] is False
    assert data["model"] == "claude-sonnet-4"


def test_tool_calls_become_function_call_items_after_the_text() -> None:
    calls = [
        {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'}},
        {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"location":"Rome"}'}},
    ]
    data = from_chat(completion({"content": "Let me check.", "tool_calls": calls}, finish="tool_calls"), {"model": "m", "input": "x", "tools": [WEATHER]})
    response = Response.model_validate(data)
    assert [item.type for item in response.output] == ["message", "function_call", "function_call"]
    assert [(i.call_id, i.name, i.arguments, i.status) for i in response.output[1:]] == [
        ("toolu_1", "get_weather", '{"location":"Paris"}', "completed"),
        ("toolu_2", "get_weather", '{"location":"Rome"}', "completed"),
    ]
    assert response.output[1].id.startswith("fc_") and response.output[1].id != response.output[2].id
    assert response.status == "completed"


def test_tool_calls_alone_have_no_message_item() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]
    data = from_chat(completion({"content": None, "tool_calls": calls}, finish="tool_calls"), {"model": "m", "input": "x"})
    assert [item["type"] for item in data["output"]] == ["function_call"]
    assert Response.model_validate(data).output_text == ""


def test_length_finish_is_incomplete() -> None:
    data = from_chat(completion({"content": "cut sho"}, finish="length"), {"model": "m", "input": "x", "max_output_tokens": 2})
    response = Response.model_validate(data)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert data["output"][0]["status"] == "incomplete" and data["completed_at"] is None
    assert response.output_text == "cut sho"


def test_usage_round_trips_between_shapes() -> None:
    chat = usage_dict(100, 20, cached=30, cache_write=10, reasoning=5)
    shaped = responses.usage_from_chat(chat)
    assert shaped == {
        "input_tokens": 100,
        "input_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 10},
        "output_tokens": 20,
        "output_tokens_details": {"reasoning_tokens": 5},
        "total_tokens": 120,
    }
    assert responses.usage_to_chat(shaped) == chat
    assert responses.usage_from_chat(None) is None and responses.usage_to_chat(None) is None


def test_passthrough_usage_from_native_answers() -> None:
    native = {
        "input_tokens": 7,
        "input_tokens_details": {"cached_tokens": 2},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 1},
        "total_tokens": 10,
    }
    expected = usage_dict(7, 3, cached=2, reasoning=1)
    assert responses.passthrough_usage({"object": "response", "usage": native}) == expected
    earlier = usage_dict(1, 1)
    delta = {"type": "response.output_text.delta", "delta": "x"}
    assert responses.passthrough_stream_usage("response.output_text.delta", delta, earlier) is earlier
    completed = {"type": "response.completed", "response": {"usage": native}}
    assert responses.passthrough_stream_usage("response.completed", completed, None) == expected
    assert responses.passthrough_stream_usage("message", {"type": "response.incomplete", "response": {"usage": native}}, None) == expected
    assert responses.passthrough_stream_usage("response.failed", {"type": "response.failed", "response": {"usage": None}}, earlier) is earlier


# -- stream translation --------------------------------------------------------------


def decode(raw: bytes, step: int | None = None) -> list[tuple[str, dict]]:
    decoder = SSEDecoder()
    pieces = [raw] if step is None else [raw[i : i + step] for i in range(0, len(raw), step)]
    events = [e for piece in pieces for e in decoder.feed(piece)] + decoder.finish()
    return [(name, orjson.loads(data)) for name, data in events]


def run(request: dict, chunks: list[dict], usage: dict | None = None) -> tuple[list[tuple[str, dict]], object]:
    """Streams chunks through ResponsesStream and checks every event with the SDK."""
    stream = ResponsesStream(request)
    raw = b"".join(b for c in chunks for b in stream.feed(c)) + b"".join(stream.finish(usage))
    assert stream.feed(chunks[0] if chunks else {}) == [] and stream.finish(usage) == []
    events = decode(raw)
    assert decode(raw, step=1) == events
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    state = ResponseStreamState(input_tools=request.get("tools") or openai.omit, text_format=openai.omit)
    final = None
    for name, data in events:
        assert name == data["type"]
        for out in state.handle_event(EVENT.validate_python(data)):
            if out.type in ("response.completed", "response.incomplete", "response.failed"):
                final = out.response
    return events, final


def text_chunks(pieces: list[str], finish: str = "stop", model: str = "claude-sonnet-4") -> list[dict]:
    first = [chunk("c", model, 1, {"role": "assistant", "content": ""})]
    body = [chunk("c", model, 1, {"content": p}) for p in pieces]
    return first + body + [chunk("c", model, 1, {}, finish), usage_chunk("c", model, 1, usage_dict(9, len(pieces)))]


def test_text_stream_has_openai_event_sequence() -> None:
    events, final = run({"model": "claude-sonnet-4", "input": "hi", "stream": True}, text_chunks(["Hello", " big", " world"]))
    assert [name for name, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final.output_text == "Hello big world"
    created, completed = events[0][1]["response"], events[-1][1]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["id"] == completed["id"]
    assert completed["status"] == "completed" and completed["usage"]["input_tokens"] == 9 and completed["usage"]["output_tokens"] == 3
    assert completed["model"] == "claude-sonnet-4"
    assert events[7][1]["text"] == "Hello big world" and events[9][1]["item"]["status"] == "completed"
    item_ids = {data.get("item_id") for _, data in events[3:9]}
    assert item_ids == {events[2][1]["item"]["id"]}


def test_chunk_granularity_does_not_change_the_result() -> None:
    text = "The quick brown fox, jumps!"
    per_char, whole = run({"model": "m", "input": "x"}, text_chunks(list(text)))[1], run({"model": "m", "input": "x"}, text_chunks([text]))[1]
    assert per_char.output_text == whole.output_text == text


def tool_chunks(calls: list[tuple[str, str, str]], step: int, text: str = "") -> list[dict]:
    out = [chunk("c", "m", 1, {"role": "assistant", "content": text})]
    for index, (cid, name, args) in enumerate(calls):
        out.append(chunk("c", "m", 1, {"tool_calls": [{"index": index, "id": cid, "type": "function", "function": {"name": name, "arguments": ""}}]}))
        for i in range(0, len(args), step):
            out.append(chunk("c", "m", 1, {"tool_calls": [{"index": index, "function": {"arguments": args[i : i + step]}}]}))
    return out + [chunk("c", "m", 1, {}, "tool_calls")]


@pytest.mark.parametrize("step", [1, 5, 1000])
def test_tool_call_stream(step: int) -> None:
    calls = [("toolu_a", "get_weather", '{"location": "Paris"}'), ("toolu_b", "get_weather", '{"location": "Rome"}')]
    events, final = run({"model": "m", "input": "x", "tools": [WEATHER]}, tool_chunks(calls, step, text="Checking."), usage_dict(5, 8))
    names = [name for name, _ in events]
    assert names[2:10] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
    ]
    # each call is closed before the next one opens, as OpenAI streams them
    opened = [i for i, n in enumerate(names) if n == "response.output_item.added"]
    closed = [i for i, n in enumerate(names) if n == "response.output_item.done"]
    assert len(opened) == len(closed) == 3 and all(c < o for c, o in zip(closed, opened[1:], strict=False))
    assert names.count("response.function_call_arguments.done") == 2 and names[-1] == "response.completed"
    assert [(o.type, getattr(o, "call_id", None), getattr(o, "arguments", None)) for o in final.output] == [
        ("message", None, None),
        ("function_call", "toolu_a", '{"location": "Paris"}'),
        ("function_call", "toolu_b", '{"location": "Rome"}'),
    ]
    assert [e[1]["output_index"] for e in events if e[0] == "response.output_item.added"] == [0, 1, 2]
    assert final.usage.total_tokens == 13 and final.output_text == "Checking."


def test_late_fragment_of_a_closed_call_is_not_sent_after_its_done_event() -> None:
    chunks = tool_chunks([("a", "f", "{}"), ("b", "g", "{}")], step=10)
    late = chunk("c", "m", 1, {"tool_calls": [{"index": 0, "function": {"arguments": "junk"}}]})
    events, final = run({"model": "m", "input": "x"}, chunks[:-1] + [late, chunks[-1]])
    assert [o.arguments for o in final.output] == ["{}", "{}"]
    assert all("junk" not in orjson.dumps(data).decode() for _, data in events)


def test_length_stream_ends_incomplete() -> None:
    events, final = run({"model": "m", "input": "x", "max_output_tokens": 2}, text_chunks(["cut", " sho"], finish="length"))
    assert events[-1][0] == "response.incomplete"
    assert final.status == "incomplete" and final.incomplete_details.reason == "max_output_tokens"
    assert events[-2][1]["item"]["status"] == "incomplete"


def test_error_mid_stream_fails_the_response() -> None:
    error = {"error": {"message": "overloaded", "type": "server_error", "code": "overloaded_error", "param": None}}
    events, final = run({"model": "m", "input": "x"}, text_chunks(["partial"])[:2] + [error])
    names = [name for name, _ in events]
    assert names[-2:] == ["error", "response.failed"] and "response.completed" not in names
    err = events[-2][1]
    assert (err["message"], err["code"]) == ("overloaded", "overloaded_error")
    assert err["error"] == {"type": "server_error", "code": "overloaded_error", "message": "overloaded", "param": None}
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error" and failed["error"]["message"] == "overloaded"
    assert failed["output"][0]["status"] == "incomplete" and failed["output"][0]["content"][0]["text"] == "partial"
    assert final.status == "failed"


def test_rate_limit_error_keeps_its_code() -> None:
    error = {"error": {"message": "slow down", "type": "rate_limit_exceeded", "code": "rate_limit_exceeded", "param": None}}
    events, _ = run({"model": "m", "input": "x"}, [error])
    assert [n for n, _ in events] == ["response.created", "response.in_progress", "error", "response.failed"]
    assert events[-1][1]["response"]["error"]["code"] == "rate_limit_exceeded"


def test_usage_from_finish_wins_and_empty_stream_completes() -> None:
    events, final = run({"model": "m", "input": "x"}, [], usage_dict(4, 0))
    assert [n for n, _ in events] == ["response.created", "response.in_progress", "response.completed"]
    assert final.usage.input_tokens == 4 and final.output == []
    events, final = run({"model": "m", "input": "x"}, text_chunks(["a"]), usage_dict(50, 60))
    assert final.usage.input_tokens == 50


# -- the fake upstream's native endpoint, through the official SDK -------------------


@pytest.fixture(scope="module")
def fake():
    upstream = FakeUpstream()
    upstream.start()
    yield upstream
    upstream.stop()


@pytest.fixture
def client(fake: FakeUpstream):
    fake.reset()
    with openai.OpenAI(base_url=fake.url + "/v1", api_key="sk-test", max_retries=0) as sdk:
        yield sdk


def test_fake_answers_a_valid_response(fake: FakeUpstream, client: openai.OpenAI) -> None:
    response = client.responses.create(model="gpt-5", instructions="Be brief please.", input="hello there")
    assert response.output_text == "echo: hello there"
    assert response.usage.input_tokens == count_tokens("hello there") + count_tokens("Be brief please.") == 5
    assert response.usage.output_tokens == 3
    raw = httpx.post(fake.url + "/v1/responses", json={"model": "gpt-5", "input": "hi"}).json()
    Response.model_validate(raw)
    assert fake.seen("/v1/responses")[0].body["model"] == "gpt-5"


def test_fake_streams_text_the_sdk_accumulates(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.set("gpt-5", reply="one two three four")
    with client.responses.stream(model="gpt-5", input="hi") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert final.output_text == "one two three four" and final.usage.output_tokens == 4
    assert kinds.count("response.output_text.delta") == 4 and kinds[0] == "response.created" and kinds[-1] == "response.completed"


def test_fake_calls_the_first_tool_then_reads_its_result(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.set("gpt-5", tool_args={"location": "Oslo"})
    with client.responses.stream(model="gpt-5", input="weather?", tools=[WEATHER]) as stream:
        final = stream.get_final_response()
    call = final.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and orjson.loads(call.arguments) == {"location": "Oslo"}
    followup = [
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "cold"},
    ]
    assert client.responses.create(model="gpt-5", input=followup, tools=[WEATHER]).output_text == "tool said: cold"


def test_fake_stops_at_max_output_tokens(client: openai.OpenAI) -> None:
    response = client.responses.create(model="gpt-5", input="a b c d e", max_output_tokens=3)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "echo: a b"


def test_fake_errors_in_openai_shape(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.set("gpt-5", status=429, error_message="Rate limit reached")
    with pytest.raises(openai.RateLimitError) as limited:
        client.responses.create(model="gpt-5", input="x")
    assert limited.value.code == "rate_limit_exceeded"
    fake.set("gpt-5", status=400, error_message="maximum context length exceeded")
    with pytest.raises(openai.BadRequestError) as too_long:
        client.responses.create(model="gpt-5", input="x")
    assert too_long.value.code == "context_length_exceeded" and too_long.value.param == "input"
    assert "context window" in too_long.value.message


def test_fake_serves_azure_paths(fake: FakeUpstream) -> None:
    fake.reset()
    body = {"model": "my-deployment", "input": "hey"}
    v1 = httpx.post(fake.url + "/openai/v1/responses", json=body, headers={"api-key": "k"})
    preview = httpx.post(fake.url + "/openai/responses?api-version=2025-04-01-preview", json=body)
    assert Response.model_validate(v1.json()).output_text == Response.model_validate(preview.json()).output_text == "echo: hey"
    assert fake.seen("/openai/responses")[0].query == {"api-version": "2025-04-01-preview"}
    assert httpx.post(fake.url + "/openai/responses", json=body).status_code == 404
    fake.set("my-deployment", status=429, error_message="throttled")
    throttled = httpx.post(fake.url + "/openai/v1/responses", json=body)
    assert throttled.status_code == 429 and throttled.json() == {"error": {"code": "429", "message": "throttled"}}
