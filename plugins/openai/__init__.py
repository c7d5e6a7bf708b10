"""Providers ``openai`` and ``openai_compatible``: any endpoint that speaks OpenAI's API.

``openai`` defaults its base URL to OpenAI's; ``openai_compatible`` needs a ``base_url`` (vLLM, Ollama,
Groq, Together, OpenRouter, DeepSeek, Mistral... are then just config). The adapters themselves are
the core's public OpenAI wire adapter (:mod:`respan_gateway.openai_adapter`), which Azure and third
parties subclass: this plugin only registers them, so disabling it leaves them unregistered.
"""

from __future__ import annotations

from respan_gateway import OpenAIAdapter, OpenAICompatibleAdapter, hookimpl
from respan_gateway.hookspecs import RegisterProvider


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    register("openai", OpenAIAdapter)
    register("openai_compatible", OpenAICompatibleAdapter)
