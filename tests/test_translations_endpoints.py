"""The pure parts of the new endpoints, without a server: Anthropic Messages to chat and
back (requests, answers, the event stream), rerank translations, multipart bodies
re-encoded from their pieces, prices and usage of the units that are not tokens."""

from __future__ import annotations

import hashlib
import os

import httpx
import orjson
import pytest

from lockgate.kernel.multipart import Form, FormError
from lockgate.providers import cohere, jina, messages, prices, rerank, voyage
from lockgate.providers.base import Price, UnsupportedRequest
from lockgate.providers.endpoints import kind_of
from lockgate.providers.meter import UsageMeter, answer_usage, usage_bound
from lockgate.providers.sse import SSEDecoder
from lockgate.providers.usage import realtime_usage


# -- Messages -> chat ------------------------------------------------------------------------
def test_system_blocks_tools_and_choice():
    chat = messages.to_chat(
        {
            "model": "m",
            "max_tokens": 50,
            "system": [{"type": "text", "text": "one", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "two"}],
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0.2,
            "top_k": 5,
            "metadata": {"user_id": "u1"},
            "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": True},
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "stream": True,
        }
    )
    assert chat["messages"][0] == {"role": "system", "content": "one\n\ntwo"}
    assert chat["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "description": "d"}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}} and chat["parallel_tool_calls"] is False
    assert chat["user"] == "u1" and chat["temperature"] == 0.2 and "top_k" not in chat and "thinking" not in chat
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}


def test_tool_results_come_first_and_their_images_follow():
    chat = messages.to_chat({"model": "m", "messages": [
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"}, {"type": "text", "text": "calling"},
                                          {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
        {"role": "user", "content": [
            {"type": "text", "text": "here"},
            {"type": "tool_result", "tool_use_id": "t1", "is_error": True, "content": [
                {"type": "text", "text": "shot"}, {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAA"}}]},
        ]},
    ]})
    assistant, tool, user = chat["messages"]
    assert assistant == {
        "role": "assistant",
        "content": "calling",
        "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}],
    }
    assert tool == {"role": "tool", "tool_call_id": "t1", "content": "shot"}
    assert user["content"] == [{"type": "text", "text": "here"}, {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAA"}}]


def test_what_cannot_be_sent_is_refused():
    with pytest.raises(UnsupportedRequest):
        messages.to_chat({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search_20250305", "name": "web_search"}]})
    with pytest.raises(UnsupportedRequest):
        messages.to_chat({"model": "m", "messages": [{"role": "system", "content": "x"}]})
    with pytest.raises(UnsupportedRequest):
        messages.to_chat({"model": "m", "messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "url", "url": "u"}}]}]})
    pdf = messages.to_chat(
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}}]}],
        }
    )
    assert pdf["messages"][0]["content"][0]["file"]["file_data"] == "data:application/pdf;base64,JVBE"


def test_answers_back_to_messages():
    chat = {"id": "chatcmpl-abc", "model": "up", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "let me look", "reasoning_content": "thinking hard",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"q": "x"}'}}]}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "prompt_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 10}}}
    message = messages.from_chat(chat, {"model": "asked"})
    assert message["id"] == "msg_abc" and message["model"] == "asked" and message["stop_reason"] == "tool_use"
    assert [b["type"] for b in message["content"]] == ["thinking", "text", "tool_use"]
    assert message["content"][2] == {"type": "tool_use", "id": "c1", "name": "f", "input": {"q": "x"}}
    assert message["usage"] == {"input_tokens": 60, "output_tokens": 20, "cache_creation_input_tokens": 10, "cache_read_input_tokens": 30}
    for finish, stop in (("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal")):
        chat["choices"][0]["finish_reason"] = finish
        assert messages.from_chat(chat, {})["stop_reason"] == stop


def events(raw: list[bytes]) -> list[tuple[str, dict]]:
    decoder = SSEDecoder()
    return [(event, orjson.loads(data)) for event, data in decoder.feed(b"".join(raw)) + decoder.finish()]


def chunk(delta: dict, finish: str | None = None, **extra) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


def test_stream_blocks_open_and_close_in_turn():
    stream = messages.MessagesStream({"model": "m", "messages": [{"role": "user", "content": "hello"}]})
    out = []
    for c in (
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning_content": "hm"}),
        chunk({"content": "a"}),
        chunk({"content": "b"}),
        chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x":'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "c2", "function": {"name": "g", "arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        chunk({}, "tool_calls"),
        {"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 7}},
    ):
        out += stream.feed(c)
    out += stream.finish(None)
    seen = events(out)
    kinds = [e for e, _ in seen]
    assert kinds == ["message_start", "ping",
                     "content_block_start", "content_block_delta", "content_block_stop",
                     "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
                     "content_block_start", "content_block_delta", "content_block_stop",
                     "content_block_start", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"]
    starts = [d["content_block"]["type"] for e, d in seen if e == "content_block_start"]
    assert starts == ["thinking", "text", "tool_use", "tool_use"]
    assert [d["index"] for e, d in seen if e == "content_block_start"] == [0, 1, 2, 3]
    assert seen[0][1]["message"]["id"] == "msg_1"
    delta = seen[-2][1]
    assert delta["delta"]["stop_reason"] == "tool_use" and delta["usage"] == {
        "input_tokens": 9,
        "output_tokens": 7,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    fragments = [(d["index"], d["delta"]["partial_json"]) for e, d in seen if e == "content_block_delta" and d["delta"]["type"] == "input_json_delta"]
    assert fragments == [(2, '{"x":'), (3, "{}")], "a late fragment of a closed call is not sent (Anthropic cannot reopen a block)"


def test_stream_error_and_empty_stream():
    stream = messages.MessagesStream({"model": "m", "messages": []})
    out = stream.feed(chunk({"content": "x"})) + stream.feed({"error": {"message": "boom"}}) + stream.finish(None)
    assert [e for e, _ in events(out)][-1] == "error" and events(out)[-1][1]["error"]["message"] == "boom"
    empty = messages.MessagesStream({"model": "m", "messages": []})
    assert [e for e, _ in events(empty.finish(None))] == ["message_start", "ping", "message_delta", "message_stop"]


def test_error_shape():
    body = messages.error_body(429, {"error": {"message": "slow down", "type": "rate_limit_exceeded", "code": "rate_limit_exceeded", "param": None}})
    assert body == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    assert messages.error_body(502, {"error": {}})["error"]["type"] == "api_error"
    assert messages.error_body(503, {"error": {"message": "m"}})["error"]["type"] == "overloaded_error"


def test_count_tokens_counts_everything_the_model_reads():
    base = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}
    with_tools = {**base, "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {"a": {"type": "string"}}}}]}
    with_calls = {
        **base,
        "messages": [*base["messages"], {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": "x" * 400}}]}],
    }
    assert messages.count_tokens(base) < messages.count_tokens(with_tools)
    assert messages.count_tokens(with_calls) >= messages.count_tokens(base) + 100


# -- rerank -------------------------------------------------------------------------------------
BODY = {
    "model": "r",
    "query": "q",
    "documents": ["a", {"text": "b"}, {"title": "T", "body": "B"}],
    "top_n": 2,
    "return_documents": True,
    "max_chunks_per_doc": 3,
}


def test_rerank_requests_per_provider():
    assert cohere.rerank_body(BODY, "rerank-v3.5") == {"model": "rerank-v3.5", "query": "q", "documents": ["a", "b", "title: T\nbody: B"], "top_n": 2}
    assert jina.rerank_body(BODY, "j") == {"model": "j", "query": "q", "documents": ["a", "b", "title: T\nbody: B"], "return_documents": False, "top_n": 2}
    assert voyage.rerank_body({**BODY, "truncation": False}, "v")["top_k"] == 2 and "top_n" not in voyage.rerank_body(BODY, "v")
    assert rerank.texts({**BODY, "rank_fields": ["body"]})[2] == "body: B"


def test_rerank_answers_per_provider():
    cohere_answer = rerank.from_compatible({"id": "x", "results": [{"index": 2, "relevance_score": 0.1}, {"index": 0, "relevance_score": 0.9}],
                                            "meta": {"billed_units": {"search_units": 1}}}, BODY)
    assert [r["index"] for r in cohere_answer["results"]] == [0, 2], "best first"
    assert cohere_answer["results"][1]["document"] == {"text": "title: T\nbody: B"} and cohere_answer["meta"]["billed_units"] == {"search_units": 1}
    voyage_answer = voyage.from_voyage(
        {"object": "list", "data": [{"index": 1, "relevance_score": 0.5}], "usage": {"total_tokens": 12}}, {**BODY, "return_documents": False}
    )
    assert voyage_answer["results"] == [{"index": 1, "relevance_score": 0.5}] and voyage_answer["meta"]["billed_units"] == {"input_tokens": 12}
    tei = rerank.from_compatible({"results": [{"index": 0, "score": 0.3}]}, {"query": "q", "documents": ["a"]})
    assert tei["results"] == [{"index": 0, "relevance_score": 0.3}]
    with pytest.raises(ValueError):
        rerank.from_compatible({"results": [{"index": "0"}]}, BODY)


# -- multipart ----------------------------------------------------------------------------------
def multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x", data=fields, files=files)
    return request.read(), request.headers["content-type"]


@pytest.mark.parametrize("piece", [1, 7, 64, 4096, 1 << 20])
def test_a_form_is_read_in_any_pieces_and_written_back_whole(piece):
    audio = os.urandom(100_000) + b"\r\n--" + os.urandom(100)  # bytes that look like a boundary's start
    raw, content_type = multipart(
        {"model": "asked", "prompt": "héllo", "timestamp_granularities[]": ["word", "segment"]}, {"file": ("a b.wav", audio, "audio/wav")}
    )
    form = Form(content_type)
    for i in range(0, len(raw), piece):
        form.feed(raw[i : i + piece])
    form.finish()
    fields = form.fields()
    assert fields == {"model": "asked", "prompt": "héllo", "timestamp_granularities[]": ["word", "segment"]}
    assert form.size == len(raw) and form.files()[0].size == len(audio)
    again = b"".join(bytes(p) for p in form.pieces({**fields, "model": "served", "language": "en"}))
    parsed = Form(content_type)
    parsed.feed(again)
    parsed.finish()
    assert parsed.fields() == {**fields, "model": "served", "language": "en"}
    file = parsed.files()[0]
    assert (file.name, file.filename, file.content_type) == ("file", "a b.wav", "audio/wav")
    assert hashlib.sha256(b"".join(bytes(p) for p in file.data)).digest() == hashlib.sha256(audio).digest()
    unchanged = b"".join(bytes(p) for p in form.pieces(fields))
    assert len(unchanged) == len(raw), "the same fields give a body of the same size"


def test_file_pieces_are_views_not_copies():
    raw, content_type = multipart({"model": "m"}, {"file": ("a.wav", b"x" * 200_000, "audio/wav")})
    form = Form(content_type)
    form.feed(raw)
    form.finish()
    assert all(isinstance(p, memoryview) for p in form.files()[0].data)


def test_bad_forms_are_refused():
    for content_type, raw in (("multipart/form-data", b"x"), ("multipart/form-data; boundary=zz", b"--zz\r\nno-disposition: x\r\n\r\nv\r\n--zz--\r\n"),
                              ("multipart/form-data; boundary=zz", b"--zz\r\nContent-Disposition: form-data; name=a\r\n\r\nunfinished")):
        with pytest.raises(FormError):
            form = Form(content_type)
            form.feed(raw)
            form.finish()


# -- kinds, prices, usage -----------------------------------------------------------------------
def test_kinds_by_path():
    assert kind_of("/v1/messages/count_tokens") == "count_tokens" and kind_of("/messages") == "messages"
    assert kind_of("/v2/rerank") == kind_of("/rerank") == "rerank"
    assert kind_of("/my-app/llm/v1/audio/speech") == "speech" and kind_of("/v1/nope") is None


def test_unit_prices():
    assert prices.lookup("rerank-v3.5").per_search_unit == 0.002
    assert prices.lookup("cohere.rerank-v3-5:0").per_search_unit == 0.002
    assert prices.lookup("gpt-4o-transcribe").audio_input_per_mtok == 6.0, "not gpt-4o's chat price"
    assert prices.lookup("gpt-4o-mini-tts").per_mchar == 15.0
    dalle = prices.lookup("dall-e-3")
    assert prices.cost({"images": 2, "image_quality": "hd", "image_size": "1792x1024"}, dalle) == pytest.approx(0.24)
    assert prices.cost({"images": 1, "image_quality": "standard", "image_size": "1024x1024"}, dalle) == pytest.approx(0.04)
    assert prices.cost({"images": 1, "image_quality": None, "image_size": "1024x1024"}, dalle) == pytest.approx(0.08), "quality unknown: the dearest"
    assert prices.cost({"audio_seconds": 90}, prices.lookup("whisper-1")) == pytest.approx(0.009)
    assert prices.cost({"characters": 2_000_000}, prices.lookup("tts-1-hd")) == pytest.approx(60.0)
    realtime = realtime_usage({"input_tokens": 1000, "output_tokens": 500, "input_token_details": {"audio_tokens": 800, "cached_tokens": 400,
                               "cached_tokens_details": {"audio_tokens": 300}}, "output_token_details": {"audio_tokens": 400}})
    assert prices.cost(realtime, prices.lookup("gpt-4o-realtime-preview")) == pytest.approx((100 * 5 + 500 * 40 + 400 * 2.5 + 100 * 20 + 400 * 80) / 1e6)
    assert prices.cost({"prompt_tokens": 10, "completion_tokens": 5}, Price(1, 2)) == pytest.approx(20 / 1e6), "chat pricing unchanged"


def test_usage_read_off_answers():
    assert answer_usage("rerank", {"meta": {"billed_units": {"search_units": 3}}}) == {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "search_units": 3,
    }
    assert answer_usage("rerank", {"usage": {"total_tokens": 40}})["prompt_tokens"] == 40
    image = answer_usage(
        "image_generation",
        {"data": [{}], "usage": {"input_tokens": 50, "input_tokens_details": {"text_tokens": 20, "image_tokens": 30}, "output_tokens": 4160}},
    )
    assert image["prompt_tokens_details"] == {"image_tokens": 30} and image["completion_tokens_details"] == {"image_tokens": 4160}
    assert answer_usage("image_generation", {"data": [{}, {}]}, {"quality": "hd", "size": "1024x1792"}) == {
        "images": 2,
        "image_quality": "hd",
        "image_size": "1024x1792",
    }
    assert answer_usage("transcription", {"text": "x", "usage": {"type": "duration", "seconds": 7}}) == {"audio_seconds": 7}
    assert answer_usage("translation", {"text": "x", "duration": 3.5}) == {"audio_seconds": 3.5}
    assert answer_usage("speech", None, {"input": "hello"}) == {"characters": 5}
    meter = UsageMeter("transcription", {})
    meter.start({"headers": [(b"content-type", b"text/plain")]})
    meter.feed(b"a transcript of thirty-one char")
    assert meter.usage is None and meter.estimate({}) == {"audio_seconds": 3, "estimated": True}


def test_bounds_cover_what_can_be_billed():
    dalle = prices.lookup("dall-e-3")
    bound = usage_bound("image_generation", {"prompt": "p", "n": 3, "size": "1792x1024"}, 100)
    assert prices.cost(bound, dalle) == pytest.approx(3 * 0.12), "three images at the dearest quality for the size"
    audio = usage_bound("transcription", {}, 0, [("file", 750 * 60)])
    assert prices.cost(audio, prices.lookup("whisper-1")) >= 0.006, "a minute at the fewest bytes a second any codec sends"
    docs = usage_bound("rerank", {"query": "q", "documents": ["x" * 600] * 150}, 1)
    assert docs["search_units"] == 3, "each long document is two chunks: 300 chunks, 3 units"
