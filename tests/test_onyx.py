"""What Onyx does, done the way Onyx does it: model discovery through `/v1/model/info`,
then the `litellm` library with `litellm_proxy/<name>` and a base URL without `/v1`."""

from __future__ import annotations

import json
import os

import httpx
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import
litellm = pytest.importorskip("litellm")

KEY = "sk-onyx-admin-typed-this"
TOOLS = [
    {
        "type": "function",
        "function": {"name": "search", "description": "search docs", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}},
    }
]


def test_model_discovery_in_litellm_schema(gateway):
    response = httpx.get(gateway.url + "/v1/model/info", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200
    entries = {e["model_name"]: e for e in response.json()["data"]}
    claude = entries["claude"]
    assert claude["litellm_params"] == {"model": "anthropic/claude-3-5-sonnet-20241022", "custom_llm_provider": "anthropic"}
    info = claude["model_info"]
    for field in ("max_input_tokens", "max_tokens", "supports_vision", "supports_reasoning", "litellm_provider", "mode"):
        assert field in info
    assert info["max_input_tokens"] == 200_000 and info["mode"] == "chat" and info["supports_vision"] is True
    assert httpx.get(gateway.url + "/model/info").json() == response.json()


@pytest.mark.parametrize("model", ["claude", "gemini-flash", "gpt-4o-mini"])
def test_litellm_streaming_chat_as_onyx_calls_it(gateway, upstream, model):
    stream = litellm.completion(
        model=f"litellm_proxy/{model}",
        base_url=gateway.url,
        api_key=KEY,
        messages=[{"role": "system", "content": "You are Onyx."}, {"role": "user", "content": "hello from onyx"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"think": False},
        temperature=0,
        max_tokens=100,
    )
    text = ""
    usage = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        usage = getattr(chunk, "usage", None) or usage
    assert text == "echo: hello from onyx"
    assert usage is not None and usage.completion_tokens > 0
    seen = upstream.requests[-1]
    assert KEY not in json.dumps(seen.headers)
    if model == "gpt-4o-mini":
        assert seen.body["think"] is False, "OpenAI-compatible upstreams get Onyx's extra fields"


def test_litellm_tool_call(gateway, upstream):
    response = litellm.completion(
        model="litellm_proxy/claude", base_url=gateway.url, api_key=KEY, messages=[{"role": "user", "content": "find the doc"}], tools=TOOLS
    )
    call = response.choices[0].message.tool_calls[0]
    assert call.function.name == "search"
    assert json.loads(call.function.arguments) == {"location": "Paris"}


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude"])
@pytest.mark.parametrize("stream", [False, True])
def test_litellm_responses_bridge_as_onyx_calls_it(gateway, upstream, model, stream):
    """Onyx sends real OpenAI model names through `litellm_proxy/responses/<name>`,
    which litellm turns into `POST {base}/responses`."""
    response = litellm.completion(
        model=f"litellm_proxy/responses/{model}",
        api_base=gateway.url,
        api_key=KEY,
        messages=[{"role": "system", "content": "You are Onyx."}, {"role": "user", "content": "hello responses"}],
        stream=stream,
    )
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in response if c.choices)
    else:
        text = response.choices[0].message.content
    assert text == "echo: hello responses"
    paths = [r.path for r in upstream.requests]
    assert paths == (["/v1/responses"] if model == "gpt-4o-mini" else ["/v1/messages"])
