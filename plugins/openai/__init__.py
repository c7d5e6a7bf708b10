"""Providers ``openai`` and ``openai_compatible``: any endpoint that speaks OpenAI's API.

``openai`` defaults its base URL to OpenAI's; ``openai_compatible`` needs a ``base_url`` (vLLM, Ollama,
Groq, Together, OpenRouter, DeepSeek, Mistral... are then just config). The body goes upstream as the
client sent it, less the Respan params and with the provider's model name; answers come back
untouched, streams chunk by chunk.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import msgspec

from respan_gateway import Call, Chunk, JSONResult, ProviderAdapter, Result, StreamInterrupted, StreamResult, Target, UpstreamError, hookimpl
from respan_gateway.config import ConfigError
from respan_gateway.sse import DONE

_FINISHED = re.compile(rb'"finish_reason"\s*:\s*"')


class OpenAIAdapter(ProviderAdapter):
    default_base_url = "https://api.openai.com/v1"
    requires_key = True

    async def chat(self, call: Call, target: Target) -> Result:
        return await self.forward(call, target, "/chat/completions")

    async def embeddings(self, call: Call, target: Target) -> Result:
        return await self.forward(call, target, "/embeddings")

    def headers(self, call: Call, target: Target) -> dict[str, str]:
        key = self.key_for(target)
        return self.request_headers(call, {"authorization": f"Bearer {key}"} if key else {})

    def url(self, target: Target, path: str) -> str:
        return (target.base_url or self.base_url).rstrip("/") + path

    async def forward(self, call: Call, target: Target, path: str) -> Result:
        body = call.encoded_body(model=target.upstream_model) if target.upstream_model != call.model else call.encoded_body()
        response = await self.send(call, target, self.url(target, path), body, self.headers(call, target))
        if call.stream:
            return StreamResult(self.relay(response, target))
        content = await self.read_body(response, target)
        content_type = response.headers.get("content-type", "")
        if "json" not in content_type:  # e.g. an HTML page from a wrong base_url: the SDK would choke on it
            raise UpstreamError(
                f"provider `{self.id}` answered {response.status_code} with {content_type or 'no content type'}, not JSON",
                status=502, provider=self.id,
            )
        return JSONResult(response.status_code, content)

    async def relay(self, response: httpx2.Response, target: Target) -> AsyncIterator[Chunk]:
        """The provider's SSE stream as chunks; a cut, an error event or an early end raise."""
        finished = False
        try:
            async for chunk in self.events(response):
                data = chunk.data
                if data == DONE:
                    return
                if b'"error"' in data[:32]:
                    _raise_stream_error(data, self.id)
                if not finished and _FINISHED.search(data):
                    finished = True
                yield chunk
            if not finished:
                raise StreamInterrupted(f"provider `{self.id}` ended the stream before the answer was complete", provider=self.id)
        except httpx2.TransportError as exc:
            err = self.transport_error(exc, target)
            raise StreamInterrupted(f"the stream from provider `{self.id}` broke off: {err.message}", provider=self.id) from None
        finally:
            await response.aclose()


def _raise_stream_error(data: bytes, provider: str) -> None:
    try:
        obj = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return
    if isinstance(obj, dict) and obj.get("error"):
        err = obj["error"]
        message = err.get("message") if isinstance(err, dict) else str(err)
        raise StreamInterrupted(
            f"provider `{provider}` reported an error mid-stream: {message or 'unknown error'}",
            provider=provider,
            code=(err.get("code") if isinstance(err, dict) and isinstance(err.get("code"), str) else "stream_interrupted"),
        )


class OpenAICompatibleAdapter(OpenAIAdapter):
    default_base_url = ""
    requires_key = False  # local servers (vLLM, Ollama) take none

    def __init__(self, provider_id: str, settings: Any, gateway: Any) -> None:
        super().__init__(provider_id, settings, gateway)
        if not self.base_url:
            raise ConfigError(f"`providers.{provider_id}.base_url`: an openai_compatible provider needs a base_url")


@hookimpl
def register_providers(register: Any) -> None:
    register("openai", OpenAIAdapter)
    register("openai_compatible", OpenAICompatibleAdapter)
