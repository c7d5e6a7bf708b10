"""Provider ``gemini``: Google's Gemini API (generateContent / streamGenerateContent?alt=sse, embeddings).

OpenAI chat requests are translated to ``generateContent`` and answers back (:mod:`.translate`, mapping
of ``wire-formats.md`` 5.6); streams use ``streamGenerateContent?alt=sse`` and become OpenAI chunks.
Embeddings use ``batchEmbedContents``. The key travels in the ``x-goog-api-key`` header, never in
the URL, so that no error message or log line that shows a URL can carry it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx2
import msgspec

from respan_gateway import Call, Chunk, JSONResult, ProviderAdapter, ProviderSettings, Result, StreamInterrupted, StreamResult, Target, UpstreamError, hookimpl
from respan_gateway.openai_chat import include_usage

from .translate import embeddings_request, embeddings_to_openai, request_to_gemini, response_to_openai, StreamTranslator

_decode = msgspec.json.decode
_encode = msgspec.json.Encoder().encode


class GeminiSettings(ProviderSettings):
    pass


class GeminiAdapter(ProviderAdapter):
    requires_key = True
    Settings = GeminiSettings
    # Override with base_url (e.g. ".../v1" for the stable API version).
    default_base_url = "https://generativelanguage.googleapis.com/v1beta"

    async def chat(self, call: Call, target: Target) -> Result:
        body = {k: _decode(v) for k, v in call.body.items()}
        upstream = _encode(request_to_gemini(body))
        method = "streamGenerateContent?alt=sse" if call.stream else "generateContent"
        response = await self._send(call, target, method, upstream)
        if call.stream:
            if "text/event-stream" not in response.headers.get("content-type", ""):
                await response.aclose()
                raise UpstreamError(f"provider `{self.id}` did not answer with an event stream", status=502, provider=self.id)
            return StreamResult(self._stream(response, target, include_usage(call)))
        return JSONResult(200, data=response_to_openai(await self._json(response, target), target.upstream_model))

    async def embeddings(self, call: Call, target: Target) -> Result:
        body = {k: _decode(v) for k, v in call.body.items()}
        upstream = _encode(embeddings_request(body, target.upstream_model))
        response = await self._send(call, target, "batchEmbedContents", upstream, stream=False)
        answer = await self._json(response, target)
        return JSONResult(200, data=embeddings_to_openai(answer, target.upstream_model, body.get("encoding_format")))

    # -- the exchange -----------------------------------------------------------------------------
    def url(self, target: Target, method: str) -> str:
        model = target.upstream_model.removeprefix("models/")
        return f"{(target.base_url or self.base_url).rstrip('/')}/models/{quote(model, safe='')}:{method}"

    def headers(self, call: Call, target: Target) -> dict[str, str]:
        # The key goes in a header, never in the URL, so that no error message can carry it.
        key = self.key_for(target)
        return self.request_headers(call, {"x-goog-api-key": key} if key else {})

    async def _send(self, call: Call, target: Target, method: str, body: bytes, stream: bool | None = None) -> httpx2.Response:
        return await self.send(call, target, self.url(target, method), body, self.headers(call, target), stream=stream)

    async def _json(self, response: httpx2.Response, target: Target) -> dict[str, Any]:
        return await self.read_json(response, target)

    async def _stream(self, response: httpx2.Response, target: Target, usage: bool) -> AsyncIterator[Chunk]:
        translator = StreamTranslator(self.id, target.upstream_model, usage)
        try:
            async for event in self.events(response):
                try:
                    data = _decode(event.data)
                except msgspec.DecodeError:
                    raise StreamInterrupted(f"provider `{self.id}` sent a malformed stream chunk", provider=self.id) from None
                if isinstance(data, dict):
                    for chunk in translator.feed(data):
                        yield chunk
        except httpx2.TransportError as exc:
            err = self.transport_error(exc, target)
            raise StreamInterrupted(f"the stream from provider `{self.id}` broke off: {err.message}", provider=self.id) from None
        finally:
            await response.aclose()
        for chunk in translator.close():
            yield chunk


@hookimpl
def register_providers(register: Any) -> None:
    register("gemini", GeminiAdapter)
