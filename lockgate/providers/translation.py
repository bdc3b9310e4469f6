"""How a request of each endpoint kind goes to a deployment and comes back: a build
function (which adapter call makes the upstream request) returns the request and its
`Mode`, which says how the upstream's answer is read back for the client, whole or
streamed. Each endpoint kind (providers/endpoints.py) names its build function; the
proxy (proxy/handlers.py) sends the request and reads the answer by its mode.

Modes:
- `native`: the upstream speaks the client's API (OpenAI's Responses, Anthropic's
  Messages): its answer goes back as it came, its stream event by event;
- `chat`, `completions`: OpenAI's format, through the adapter's chat translation;
- `responses`, `messages`: the adapter's chat translation, wrapped in the Responses or
  Messages format (providers/responses.py, providers/messages.py);
- `embeddings`, `per_input` (one call per input, joined), `rerank`: never streamed;
- `media`: images, audio and moderations, passed through with their content type;
- `local`: answered by lockgate itself (a token count), nothing sent upstream.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from lockgate.providers import messages, responses, shapes
from lockgate.providers.base import Adapter, ChatStream, Deployment, TranslationError, UnsupportedRequest, UpstreamRequest, usage_requested
from lockgate.providers.sse import DONE, encode_data
from lockgate.providers.usage import rerank_usage


@dataclass(frozen=True, slots=True)
class Call:
    """A request as the translations read it."""

    kind: str  # its endpoint kind's name
    body: dict  # as it goes on (a rewrite may have named another model)
    asked: dict  # as the client sent it: an answer in its format names the model it asked for
    form: Any = None  # a multipart upload (kernel/multipart.py), whose text fields are `body`
    headers: Mapping[str, str] = field(default_factory=dict)  # the client headers its kind lets a native request carry
    references: Mapping[str, dict] = field(default_factory=dict)  # kept Responses items its `item_reference`s may name


class Events(Protocol):
    """A stream's chat chunks in the client's API: `feed` the events one chunk makes
    (an `{"error": ...}` chunk ends the stream in that API's way), `finish` the events
    that end a whole answer."""

    def feed(self, chunk: dict) -> list[bytes]: ...

    def finish(self, usage: dict | None) -> list[bytes]: ...


class ChatEvents:
    """Chat chunks as OpenAI streams them: a `data:` line each, `[DONE]` after the last."""

    def feed(self, chunk: dict) -> list[bytes]:
        return [encode_data(chunk)]

    def finish(self, usage: dict | None) -> list[bytes]:
        return [DONE]


Read = Callable[[Adapter, Deployment, Any, Call], tuple[Any, Any]]  # a whole answer -> (the client's answer, its usage)
Stream = Callable[[Adapter, Deployment, Call], tuple[ChatStream, Events]]


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    read: Read | None = None
    events: Stream | None = None  # a streamed answer: the adapter's chunks and the client's events for them
    native_stream: bool = False  # a streamed answer is the upstream's own events, passed on as they come
    whole: type = dict  # what a whole answer must parse to (a list: one answer per input)
    keeps_items: bool = False  # its output items are kept for a later `item_reference` (Responses)


def read_chat(adapter: Adapter, dep: Deployment, data: Any, call: Call) -> tuple[Any, Any]:
    answer = adapter.chat_response(dep, data)
    return answer, answer.get("usage")


def read_completions(adapter: Adapter, dep: Deployment, data: Any, call: Call) -> tuple[Any, Any]:
    return data, data.get("usage")


def read_responses(adapter: Adapter, dep: Deployment, data: Any, call: Call) -> tuple[Any, Any]:
    chat = adapter.chat_response(dep, data)
    return responses.from_chat(chat, call.asked), chat.get("usage")


def read_messages(adapter: Adapter, dep: Deployment, data: Any, call: Call) -> tuple[Any, Any]:
    chat = adapter.chat_response(dep, data)
    return messages.from_chat(chat, call.asked), chat.get("usage")


def read_embeddings(adapter: Adapter, dep: Deployment, data: Any, call: Call) -> tuple[Any, Any]:
    answer = adapter.embeddings_response(dep, data, call.body)
    return answer, answer.get("usage")


def read_per_input(adapter: Adapter, dep: Deployment, data: Any, call: Call) -> tuple[Any, Any]:
    inputs = call.body["input"]
    answers = shapes.objects(data, "answers")
    if len(answers) != len(inputs):
        raise TranslationError("one answer per input was expected")
    answer = joined_embeddings([adapter.embeddings_response(dep, one, {**call.body, "input": item}) for one, item in zip(answers, inputs, strict=True)])
    return answer, answer.get("usage")


def read_rerank(adapter: Adapter, dep: Deployment, data: Any, call: Call) -> tuple[Any, Any]:
    answer = adapter.rerank_response(dep, data, call.body)
    return answer, rerank_usage(answer)


def read_native(adapter: Adapter, dep: Deployment, data: Any, call: Call) -> tuple[Any, Any]:
    return data, adapter.passthrough_usage(call.kind, data)


def joined_embeddings(parts: list[dict]) -> dict:
    """Embeddings answers of one input each as the one list a batch gets: in input
    order, indexed from 0, usage summed."""
    items = [{**item, "index": i} for i, item in enumerate(item for part in parts for item in part["data"])]
    tokens = sum(part["usage"]["prompt_tokens"] for part in parts)
    return {"object": "list", "data": items, "model": parts[0]["model"], "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def chat_events(adapter: Adapter, dep: Deployment, call: Call) -> tuple[ChatStream, Events]:
    return adapter.chat_stream(dep, usage_requested(call.body)), ChatEvents()


def responses_events(adapter: Adapter, dep: Deployment, call: Call) -> tuple[ChatStream, Events]:
    # usage is asked for whatever the client said: response.completed carries it
    return adapter.chat_stream(dep, True), responses.ResponsesStream(call.asked)


def messages_events(adapter: Adapter, dep: Deployment, call: Call) -> tuple[ChatStream, Events]:
    return adapter.chat_stream(dep, True), messages.MessagesStream(call.asked)


NATIVE = Mode("native", read_native, native_stream=True)
CHAT = Mode("chat", read_chat, chat_events)
COMPLETIONS = Mode("completions", read_completions, chat_events)
RESPONSES = Mode("responses", read_responses, responses_events, keeps_items=True)
MESSAGES = Mode("messages", read_messages, messages_events)
EMBEDDINGS = Mode("embeddings", read_embeddings)
PER_INPUT = Mode("per_input", read_per_input, whole=list)
RERANK = Mode("rerank", read_rerank)
MEDIA = Mode("media")
LOCAL = Mode("local")


@dataclass(frozen=True, slots=True)
class Outbound:
    """What a build function makes: the upstream request (a list: one per input) and
    how its answer is read; for `local`, the answer itself."""

    mode: Mode
    request: UpstreamRequest | list[UpstreamRequest] | None = None
    answer: dict | None = None


Build = Callable[[Adapter, Deployment, Call], Outbound]


def native(request: UpstreamRequest, call: Call) -> Outbound:
    request.headers.update(call.headers)
    return Outbound(NATIVE, request)


def chat(adapter: Adapter, dep: Deployment, call: Call) -> Outbound:
    return Outbound(CHAT, adapter.chat_request(dep, call.body))


def completions(adapter: Adapter, dep: Deployment, call: Call) -> Outbound:
    if not adapter.supports_completions:
        raise UnsupportedRequest(f"`/v1/completions` is served only by OpenAI-compatible deployments, not {dep.provider}.")
    return Outbound(COMPLETIONS, adapter.passthrough_request(dep, "completions", call.body))


def embeddings(adapter: Adapter, dep: Deployment, call: Call) -> Outbound:
    inputs = call.body.get("input")
    if isinstance(inputs, list) and len(inputs) > 1 and adapter.embeds_one_input_per_call(dep):
        return Outbound(PER_INPUT, [adapter.embeddings_request(dep, {**call.body, "input": item}) for item in inputs])
    return Outbound(EMBEDDINGS, adapter.embeddings_request(dep, call.body))


def responses_api(adapter: Adapter, dep: Deployment, call: Call) -> Outbound:
    if adapter.supports_responses:
        return native(adapter.passthrough_request(dep, "responses", call.body), call)
    return Outbound(RESPONSES, adapter.chat_request(dep, responses.to_chat(call.body, call.references)))


def responses_references(adapter: Adapter, body: dict) -> list[str]:
    """The kept items a Responses request names, for a deployment that cannot resolve them itself."""
    return [] if adapter.supports_responses else responses.referenced_ids(body)


def messages_api(adapter: Adapter, dep: Deployment, call: Call) -> Outbound:
    if adapter.native_messages(dep):
        return native(adapter.passthrough_request(dep, "messages", call.body), call)
    return Outbound(MESSAGES, adapter.chat_request(dep, messages.to_chat(call.body)))


def count_tokens(adapter: Adapter, dep: Deployment, call: Call) -> Outbound:
    if dep.provider == "anthropic":
        return native(adapter.passthrough_request(dep, "count_tokens", call.body), call)
    return Outbound(LOCAL, answer={"input_tokens": messages.count_tokens(call.body)})


def rerank(adapter: Adapter, dep: Deployment, call: Call) -> Outbound:
    return Outbound(RERANK, adapter.rerank_request(dep, call.body))


def media(adapter: Adapter, dep: Deployment, call: Call) -> Outbound:
    return Outbound(MEDIA, adapter.media_request(dep, call.kind, call.body, call.form))
