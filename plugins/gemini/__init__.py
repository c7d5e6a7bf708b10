"""Provider ``gemini``: Google's Gemini API (generateContent / streamGenerateContent?alt=sse, embeddings).

OpenAI chat requests are translated to ``generateContent`` and answers back (:mod:`respan_gateway.translate.gemini`, mapping
of ``wire-formats.md`` 5.6); streams use ``streamGenerateContent?alt=sse`` and become OpenAI chunks.
Embeddings use ``batchEmbedContents``. The key travels in the ``x-goog-api-key`` header, never in
the URL, so that no error message or log line that shows a URL can carry it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import msgspec

from respan_gateway import (
    Call, Chunk, ErrorFields, GatewayError, JSONResult, ProviderAdapter, ProviderSettings, Result, StreamInterrupted,
    StreamMark, StreamResult, Target, UpstreamError, hookimpl,
)
from respan_gateway.hookspecs import RegisterProvider
from respan_gateway.openai_chat import include_usage
from respan_gateway.providers import generic_error_fields

from respan_gateway.translate.gemini import (
    StreamTranslator, embeddings_request, embeddings_to_openai, normalised_usage, request_to_gemini, response_to_openai, stream_error,
)
from respan_gateway.upstream import UpstreamResponse

_decode = msgspec.json.decode
_encode = msgspec.json.Encoder().encode


class GeminiSettings(ProviderSettings):
    pass


class _ErrorDetail(msgspec.Struct):
    message: str = ""
    code: int | None = None
    status: str | None = None


class _ErrorBody(msgspec.Struct):
    error: _ErrorDetail


_decode_error = msgspec.json.Decoder(_ErrorBody).decode


class GeminiAdapter(ProviderAdapter):
    requires_key = True
    Settings = GeminiSettings
    credential_headers = frozenset({"x-goog-api-key"})
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
            return StreamResult(self._stream(call, response, target, include_usage(call)))
        answer = await self._json(response, target)
        call.outcome.usage = normalised_usage(answer.get("usageMetadata") or {})
        return JSONResult(200, data=response_to_openai(answer, target.upstream_model))

    async def embeddings(self, call: Call, target: Target) -> Result:
        body = {k: _decode(v) for k, v in call.body.items()}
        upstream = _encode(embeddings_request(body, target.upstream_model))
        response = await self._send(call, target, "batchEmbedContents", upstream, stream=False)
        answer = await self._json(response, target)
        call.outcome.usage = normalised_usage(answer.get("usageMetadata") or {})
        return JSONResult(200, data=embeddings_to_openai(answer, target.upstream_model, body.get("encoding_format")))

    # -- the exchange -----------------------------------------------------------------------------
    def url(self, target: Target, method: str) -> str:
        model = target.upstream_model.removeprefix("models/")
        return f"{(target.base_url or self.base_url).rstrip('/')}/models/{quote(model, safe='')}:{method}"

    def headers(self, call: Call, target: Target) -> dict[str, str]:
        # The key goes in a header, never in the URL, so that no error message can carry it.
        key = self.key_for(target)
        return self.request_headers(call, {"x-goog-api-key": key} if key else {})

    async def _send(self, call: Call, target: Target, method: str, body: bytes, stream: bool | None = None) -> UpstreamResponse:
        return await self.send(call, target, self.url(target, method), body, self.headers(call, target), stream=stream)

    def error_fields(self, content: bytes) -> ErrorFields:
        """Google's ``{"error": {"code", "message", "status"}}``: the ``status`` (e.g. ``RESOURCE_EXHAUSTED``)
        is the code; other shapes the generic way."""
        try:
            err = _decode_error(content).error
        except (msgspec.DecodeError, msgspec.ValidationError):
            return generic_error_fields(content)
        if not err.message:
            return generic_error_fields(content)
        return ErrorFields(message=err.message, code=err.status or (str(err.code) if err.code is not None else None))

    async def _json(self, response: UpstreamResponse, target: Target) -> dict[str, Any]:
        return await self.read_json(response, target)

    async def _stream(self, call: Call, response: UpstreamResponse, target: Target, usage: bool) -> AsyncIterator[Chunk]:
        translator = StreamTranslator(self.id, target.upstream_model, usage)
        async for event in self.events(response, target):
            for chunk in translator.feed(_object(event, self.id)):
                yield chunk
        if translator.usage:
            call.outcome.usage = normalised_usage(translator.usage)
        for chunk in translator.close():
            yield chunk

    # -- the wire format --------------------------------------------------------------------------
    def stream_mark(self, chunk: Chunk) -> StreamMark | None:
        # No end marker: the answer is complete with a finish reason (or a blocked prompt), then the body ends.
        return "complete" if b'"finishReason"' in chunk.data or b'"blockReason"' in chunk.data else None

    def stream_error(self, chunk: Chunk) -> GatewayError | None:
        if b'"error"' not in chunk.data:
            return None
        data = _object(chunk, self.id)
        return stream_error(data["error"], self.id) if "error" in data else None


def _object(chunk: Chunk, provider: str) -> dict[str, Any]:
    try:
        data = _decode(chunk.data)
    except msgspec.DecodeError:
        raise StreamInterrupted(f"provider `{provider}` sent a malformed stream chunk", provider=provider) from None
    return data if isinstance(data, dict) else {}


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    register("gemini", GeminiAdapter)
