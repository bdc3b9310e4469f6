"""Rerank, images, audio, moderations and model retrieval end to end: `lockgate serve`
with every middleware, the fake upstream speaking each provider's wire format, and the
clients that make these calls (httpx as Onyx's reranker does, the `litellm` library as
Onyx's image and voice tools do, the openai SDK)."""

from __future__ import annotations

import hashlib
import json
import os
import time

import httpx
import openai
import pytest

from tests.conftest import SECRETS
from tests.endpoints import FULL, LIMITED, PNG, RERANK_SECRETS, cost, headers, png_file, start, wav

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import
litellm = pytest.importorskip("litellm")

QUERY = "red apple pie"
DOCUMENTS = ["green pear", "an apple pie, red", "the apple", {"text": "red apple pie recipe"}]


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    gateway = start(fake, tmp_path_factory.mktemp("media"))
    yield gateway
    gateway.stop()


@pytest.fixture
def client(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=FULL, max_retries=0, timeout=20)


def onyx_scores(url: str, model: str, documents: list, key: str = FULL) -> list[float]:
    """Exactly what Onyx's LiteLLM reranker does with the URL the admin typed."""
    response = httpx.post(url, json={"model": model, "query": QUERY, "documents": documents}, headers={"Authorization": f"Bearer {key}"})
    response.raise_for_status()
    return [item["relevance_score"] for item in sorted(response.json()["results"], key=lambda x: x["index"])]


def expected_scores(documents: list) -> list[float]:
    words = set(QUERY.split())
    texts = [d if isinstance(d, str) else d["text"] for d in documents]
    return [round(len(words & set(t.lower().split())) / len(words), 4) for t in texts]


# -- rerank ----------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["cohere-rerank", "jina-rerank", "voyage-rerank", "bge-rerank"])
@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v2/rerank"])
def test_onyx_reranker_gets_cohere_shaped_scores(gw, upstream, model, path):
    documents = [*DOCUMENTS, f"unrelated {path}"]  # each call its own: the rerank cache would answer a repeat
    assert onyx_scores(gw.url + path, model, documents) == expected_scores(documents)
    sent = upstream.requests[-1]
    assert FULL not in json.dumps(sent.headers), "the client's key never goes upstream"
    if model == "cohere-rerank":
        assert sent.path == "/v2/rerank" and sent.headers["authorization"] == "Bearer " + RERANK_SECRETS["cohere"]
        assert sent.body["documents"][3] == "red apple pie recipe", "Cohere v2 takes strings only"
    elif model == "jina-rerank":
        assert sent.path == "/jina/v1/rerank" and sent.body["return_documents"] is False
    elif model == "voyage-rerank":
        assert sent.path == "/voyage/v1/rerank" and sent.body["model"] == "rerank-2"
    else:
        assert sent.path == "/v1/rerank" and sent.body["model"] == "BAAI/bge-reranker-v2-m3"
        assert sent.body["documents"][3] == {"text": "red apple pie recipe"}, "a Cohere-shaped server gets the request as sent"


@pytest.mark.parametrize("model", ["cohere-rerank", "voyage-rerank", "jina-rerank", "demo"])
def test_rerank_top_n_and_documents(gw, upstream, model):
    body = {"model": model, "query": QUERY, "documents": DOCUMENTS, "top_n": 2, "return_documents": True}
    answer = httpx.post(gw.url + "/v1/rerank", json=body, headers=headers()).json()
    assert [r["index"] for r in answer["results"]] == [3, 1] if model != "demo" else len(answer["results"]) == 2
    for result in answer["results"]:
        source = DOCUMENTS[result["index"]]
        assert result["document"]["text"] == (source if isinstance(source, str) else source["text"])
    assert answer["meta"]["api_version"] == {"version": "2"}
    if model == "voyage-rerank":
        assert upstream.requests[-1].body["top_k"] == 2 and "top_n" not in upstream.requests[-1].body
    plain = httpx.post(gw.url + "/v1/rerank", json={**body, "return_documents": False, "query": QUERY + " x"}, headers=headers()).json()
    assert all("document" not in r for r in plain["results"])


def test_rerank_costs_by_search_unit_or_token(gw, upstream):
    cohere = httpx.post(gw.url + "/v1/rerank", json={"model": "cohere-rerank", "query": "q1", "documents": ["a", "b"]}, headers=headers())
    assert cost(cohere) == pytest.approx(0.002), "one Cohere search unit at $2 a thousand"
    assert cohere.json()["meta"]["billed_units"] == {"search_units": 1}
    jina = httpx.post(gw.url + "/v1/rerank", json={"model": "jina-rerank", "query": "q1 q2", "documents": ["a b c", "d"]}, headers=headers())
    assert jina.json()["meta"]["billed_units"] == {"input_tokens": 6}
    assert cost(jina) == pytest.approx(6 * 0.05 / 1e6)


def test_rerank_falls_back_and_is_cached(gw, upstream):
    upstream.set("flaky-rerank", status=503)
    body = {"model": "flaky-rerank", "query": "fallback please", "documents": ["fallback", "nothing"]}
    first = httpx.post(gw.url + "/v1/rerank", json=body, headers=headers())
    assert first.status_code == 200 and first.headers["x-lockgate-fallback"] == "flaky-rerank, cohere-rerank"
    assert first.headers["x-lockgate-model"] == "cohere-rerank"
    seen = len(upstream.requests)
    again = httpx.post(gw.url + "/v1/rerank", json=body, headers=headers())
    assert again.headers["x-lockgate-cache"] == "hit" and again.json()["results"] == first.json()["results"]
    assert len(upstream.requests) == seen, "a hit never reaches the upstream"
    assert cost(again) == 0


def test_embeddings_are_cached(gw, upstream):
    body = {"model": "gpt-4o-mini", "input": ["cache me"]}
    first = httpx.post(gw.url + "/v1/embeddings", json=body, headers=headers())
    second = httpx.post(gw.url + "/v1/embeddings", json=body, headers=headers())
    assert (first.headers["x-lockgate-cache"], second.headers["x-lockgate-cache"]) == ("miss", "hit")
    assert len(upstream.seen("/embeddings")) == 1


def test_rerank_bad_requests(gw):
    for body in ({"model": "cohere-rerank", "documents": ["a"]}, {"model": "cohere-rerank", "query": "q", "documents": []},
                 {"model": "cohere-rerank", "query": "q", "documents": [5]}, {"model": "cohere-rerank", "query": "q", "documents": ["a"], "top_n": 0}):
        response = httpx.post(gw.url + "/v1/rerank", json=body, headers=headers())
        assert response.status_code == 400 and set(response.json()["error"]) == {"message", "type", "code", "param"}


# -- images ------------------------------------------------------------------------------
@pytest.mark.parametrize("base", ["", "/v1"])
def test_litellm_image_generation_as_onyx_calls_it(gw, upstream, base):
    # gpt-image-1 always answers in base64: this litellm refuses response_format for it
    response = litellm.image_generation(prompt="a lighthouse", model="gpt-image-1", api_key=FULL, api_base=gw.url + base, size="1024x1536", n=1)
    assert response.data[0]["b64_json"]
    sent = upstream.seen("/images/generations")[-1]
    assert sent.body["model"] == "gpt-image-1" and sent.body["size"] == "1024x1536"
    assert sent.headers["authorization"] == "Bearer " + SECRETS["openai"]


def test_litellm_dall_e_url_and_image_edit(gw, upstream):
    # Onyx sets litellm.drop_params: this litellm takes no response_format for DALL-E 3 (its default is url)
    generated = litellm.image_generation(
        prompt="a cat", model="openai/dall-e-3", api_key=FULL, api_base=gw.url, size="1792x1024", n=1, response_format="url", drop_params=True
    )
    assert generated.data[0]["url"].startswith("https://") and generated.data[0]["revised_prompt"] == "revised: a cat"
    edited = litellm.image_edit(image=png_file(), prompt="add a hat", model="gpt-image-1", api_key=FULL, api_base=gw.url)
    assert edited.data[0]["b64_json"]
    upload = upstream.uploads[-1]
    image = upload.get("image") or upload.get("image[]")
    assert image[2] == len(PNG) and image[3] == hashlib.sha256(PNG).hexdigest(), "the upload arrives byte for byte"
    assert upload["model"] == "gpt-image-1" and upload["prompt"] == "add a hat"


def test_openai_sdk_images_with_costs(client, upstream):
    raw = client.images.with_raw_response.generate(model="dall-e-3", prompt="a fox", size="1024x1024", quality="standard")
    assert raw.parse().data[0].revised_prompt == "revised: a fox"
    assert cost(raw) == pytest.approx(0.04), "DALL-E 3 standard 1024x1024"
    hd = client.images.with_raw_response.generate(model="dall-e-3", prompt="a fox", size="1024x1792", quality="hd")
    assert cost(hd) == pytest.approx(0.12)
    image = client.images.with_raw_response.generate(model="gpt-image-1", prompt="two words", quality="high")
    usage = image.parse().usage
    assert usage.output_tokens == 4160
    assert cost(image) == pytest.approx((usage.input_tokens * 5 + 4160 * 40) / 1e6), "gpt-image-1 priced from its token usage"
    edit = client.images.with_raw_response.edit(model="gpt-image-1", image=png_file(), prompt="more")
    usage = edit.parse().usage
    assert usage.input_tokens_details.image_tokens == 323
    assert cost(edit) == pytest.approx((usage.input_tokens_details.text_tokens * 5 + 323 * 10 + 4160 * 40) / 1e6)
    variation = client.images.with_raw_response.create_variation(model="dall-e-2", image=png_file(), n=2, size="512x512")
    assert len(variation.parse().data) == 2 and cost(variation) == pytest.approx(2 * 0.018)
    assert upstream.uploads[-1]["n"] == "2" and upstream.uploads[-1]["model"] == "dall-e-2"


def test_images_on_azure_and_fallback(client, upstream):
    raw = client.images.with_raw_response.generate(model="azure-dalle", prompt="azure", quality="hd")
    assert cost(raw) == pytest.approx(0.08)
    sent = upstream.seen("/images/generations")[-1]
    assert sent.path == "/openai/deployments/dalle3-deployment/images/generations" and sent.query["api-version"]
    assert sent.headers["api-key"] == SECRETS["azure"]
    upstream.set("flaky-image", status=500)
    fell = client.images.with_raw_response.generate(model="flaky-image", prompt="fall back")
    assert fell.headers["x-lockgate-fallback"] == "flaky-image, dall-e-3" and fell.parse().data


# -- audio ---------------------------------------------------------------------------------
def test_litellm_transcription_and_speech_as_onyx_calls_them(gw, upstream, tmp_path):
    audio = tmp_path / "question.wav"
    audio.write_bytes(wav(2.0))
    with audio.open("rb") as f:
        text = litellm.transcription(model="whisper-1", file=f, api_key=FULL, api_base=gw.url)
    assert text.text == "transcript of question.wav"
    upload = upstream.uploads[-1]
    assert upload["file"][3] == hashlib.sha256(audio.read_bytes()).hexdigest()
    speech = litellm.speech(model="tts-1", input="Hello from Onyx", voice="alloy", api_key=FULL, api_base=gw.url)
    assert len(speech.content) == 100 * len("Hello from Onyx")


def test_openai_sdk_transcriptions_translations_and_costs(client, upstream):
    audio = ("meeting.wav", wav(3.0), "audio/wav")
    raw = client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=audio)
    seconds = len(audio[1]) / 16000
    assert raw.parse().text == "transcript of meeting.wav"
    assert cost(raw) == pytest.approx(round(seconds, 2) / 60 * 0.006), "Whisper by the minute"
    text = client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=audio, response_format="text")
    assert text.text.strip() == "transcript of meeting.wav" and cost(text) > 0, "a text answer is still priced"
    verbose = client.audio.transcriptions.create(model="whisper-1", file=audio, response_format="verbose_json")
    assert verbose.duration == pytest.approx(round(seconds, 2))
    translated = client.audio.translations.with_raw_response.create(model="whisper-1", file=audio)
    text = translated.parse().text
    # a translation reports no duration: it is estimated from its length (15 characters a second)
    assert text and cost(translated) == pytest.approx(-(-len(text) // 15) / 60 * 0.006)
    tokens = client.audio.transcriptions.with_raw_response.create(model="gpt-4o-transcribe", file=audio)
    assert cost(tokens) == pytest.approx((10 * 2.5 + 90 * 6 + 6 * 10) / 1e6), "gpt-4o-transcribe by its text and audio tokens"
    azure = client.audio.transcriptions.create(model="azure-whisper", file=audio)
    assert azure.text and upstream.seen("/audio/transcriptions")[-1].path == "/openai/deployments/whisper/audio/transcriptions"


def test_streamed_transcription_is_priced_at_its_end(client, upstream):
    with client.audio.transcriptions.with_streaming_response.create(model="gpt-4o-transcribe", file=("s.wav", wav(1.0), "audio/wav"), stream=True) as response:
        body = response.read()
    assert b"transcript.text.done" in body and b"x-lockgate-cost-usd=" in body
    assert float(body.rsplit(b"x-lockgate-cost-usd=", 1)[1].split()[0]) == pytest.approx((10 * 2.5 + 90 * 6 + 3 * 10) / 1e6)


def test_transcription_falls_back_with_the_same_upload(client, upstream):
    upstream.set("flaky-whisper", status=502)
    audio = wav(1.5)
    raw = client.audio.transcriptions.with_raw_response.create(model="flaky-whisper", file=("f.wav", audio, "audio/wav"))
    assert raw.headers["x-lockgate-fallback"] == "flaky-whisper, whisper-1"
    first, second = upstream.uploads[-2:]
    assert first["model"] == "flaky-whisper" and second["model"] == "whisper-1"
    assert first["file"] == second["file"] and second["file"][3] == hashlib.sha256(audio).hexdigest()


def test_speech_is_streamed_as_it_arrives_and_priced_by_characters(client, upstream):
    upstream.set("tts-1", chunk_delay_s=0.3)
    text = "Lockgate streams audio as the upstream sends it, piece by piece."
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input=text) as response:
        assert response.headers["content-type"] == "audio/mpeg"
        assert cost(response) == pytest.approx(len(text) * 15 / 1e6)
        pieces = response.iter_bytes(1000)
        first = next(pieces)
        assert first and upstream.streams_completed == 0, "the first audio arrived while the upstream was still sending"
        rest = b"".join(pieces)
    assert len(first) + len(rest) == 100 * len(text)
    assert upstream.streams_completed == 1


def test_azure_speech_and_a_per_key_limit(client, upstream):
    for _ in range(2):
        assert client.audio.speech.create(model="azure-tts", voice="nova", input="hi").content
    assert upstream.seen("/audio/speech")[-1].path == "/openai/deployments/tts-1-hd/audio/speech"
    with pytest.raises(openai.RateLimitError) as refused:
        client.audio.speech.create(model="azure-tts", voice="nova", input="hi")
    assert refused.value.response.headers["x-ratelimit-limit-requests"] == "2"
    assert len(upstream.seen("/audio/speech")) == 2, "the limited call never went upstream"


# -- moderations, models -----------------------------------------------------------------------
def test_moderations_are_free(client, upstream):
    raw = client.moderations.with_raw_response.create(model="omni-moderation-latest", input=["I will kill the process", "hello"])
    results = raw.parse().results
    assert [r.flagged for r in results] == [True, False] and results[0].categories.violence
    assert cost(raw) == 0
    assert client.moderations.create(model="azure-moderation", input="hi").results[0].flagged is False
    assert upstream.seen("/moderations")[-1].path == "/openai/deployments/text-moderation-latest/moderations"
    default = client.moderations.create(input="no model named")
    assert default.model == "omni-moderation-latest", "OpenAI's default model when none is named"


def test_models_retrieve(gw, client):
    model = client.models.retrieve("whisper-1")
    assert (model.id, model.object) == ("whisper-1", "model")
    assert client.models.retrieve("fast").id == "fast", "an alias is retrieved like the model it stands for"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.models.retrieve("no-such-model")
    assert unknown.value.response.json()["error"]["code"] == "model_not_found"
    limited = openai.OpenAI(base_url=gw.url + "/v1", api_key=LIMITED, max_retries=0)
    assert limited.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    assert limited.models.retrieve("fast").id == "fast"
    for name in ("dall-e-3", "voice"):
        with pytest.raises(openai.NotFoundError):
            limited.models.retrieve(name)
    assert httpx.get(gw.url + "/models/whisper-1", headers=headers()).json()["id"] == "whisper-1"


async def test_onyx_voice_speech_call(gw, upstream):
    """Onyx's streaming synthesizer: aiohttp, `{api_base}/v1/audio/speech`, mp3 read in 8 KB chunks."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        payload = {"model": "tts-1", "voice": "alloy", "input": "Onyx speaks", "speed": 1.0, "response_format": "mp3"}
        async with session.post(
            gw.url + "/v1/audio/speech", headers={"Authorization": f"Bearer {FULL}", "Content-Type": "application/json"}, json=payload
        ) as response:
            assert response.status == 200 and response.headers["content-type"] == "audio/mpeg"
            audio = b"".join([chunk async for chunk in response.content.iter_chunked(8192)])
    assert len(audio) == 100 * len("Onyx speaks")
    assert upstream.requests[-1].body["speed"] == 1.0


def test_a_client_leaving_a_speech_stream_cancels_the_upstream(gw, upstream):
    upstream.set("tts-1", chunk_delay_s=0.2)
    body = {"model": "tts-1", "voice": "alloy", "input": "a long answer that takes its time to be spoken aloud"}
    with httpx.stream("POST", gw.url + "/v1/audio/speech", json=body, headers=headers()) as response:
        next(response.iter_raw())
    deadline = time.monotonic() + 5
    while upstream.streams_aborted == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.streams_aborted == 1 and upstream.streams_completed == 0
