"""OpenAI-compatible hosts by name: each is the `openai` adapter with the host's
default `base_url` and the environment variable its key is read from when the
deployment sets no `api_key`. `base_url` and `api_key` override both.

Choices where the hosts differ from OpenAI's own API:
- None of them is sent the native Responses API (few serve it, and not alike):
  `/v1/responses` is translated through chat, as for anthropic and gemini.
- `stream_options.include_usage` is not added for hosts that reject unknown stream
  options or always report usage on the last chunk anyway (mistral, perplexity).
- Local servers (ollama, vllm, lmstudio) need no key; a key variable that is set is
  still sent, since each can be started with one.
"""

from __future__ import annotations

from dataclasses import dataclass

from lockgate.providers.base import Deployment, UpstreamRequest
from lockgate.providers.openai import OpenAIAdapter


@dataclass(frozen=True, slots=True)
class Preset:
    base_url: str
    key_env: str
    key_required: bool = True
    stream_usage: bool = True  # ask for stream_options.include_usage
    semconv: str | None = None  # its name in OpenTelemetry's GenAI conventions, where they list it


PRESETS: dict[str, Preset] = {
    "groq": Preset("https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    "mistral": Preset("https://api.mistral.ai/v1", "MISTRAL_API_KEY", stream_usage=False, semconv="mistral_ai"),
    "deepseek": Preset("https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"),
    "together": Preset("https://api.together.xyz/v1", "TOGETHER_API_KEY"),
    "fireworks": Preset("https://api.fireworks.ai/inference/v1", "FIREWORKS_API_KEY"),
    "openrouter": Preset("https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    "xai": Preset("https://api.x.ai/v1", "XAI_API_KEY", semconv="x_ai"),
    "perplexity": Preset("https://api.perplexity.ai", "PERPLEXITY_API_KEY", stream_usage=False),
    "ollama": Preset("http://127.0.0.1:11434/v1", "OLLAMA_API_KEY", key_required=False),
    "vllm": Preset("http://127.0.0.1:8000/v1", "VLLM_API_KEY", key_required=False),
    "lmstudio": Preset("http://127.0.0.1:1234/v1", "LM_STUDIO_API_KEY", key_required=False),
    # embeddings and rerank only (providers/jina.py, providers/voyage.py)
    "jina": Preset("https://api.jina.ai/v1", "JINA_API_KEY"),
    "voyage": Preset("https://api.voyageai.com/v1", "VOYAGE_API_KEY"),
}


class PresetAdapter(OpenAIAdapter):
    """The preset's base_url is filled in when gateway.yaml is read (providers/registry.py)."""

    supports_responses = False

    def __init__(self, name: str, preset: Preset) -> None:
        self.name = name
        self.preset = preset

    def chat_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        if self.preset.stream_usage:
            return super().chat_request(dep, body)
        return self.build(dep, "chat/completions", body)

