"""The OpenAI wire adapter: a public base for every provider that speaks OpenAI's API.

The ``openai`` plugin registers :class:`OpenAIAdapter` as ``openai`` and
:class:`OpenAICompatibleAdapter` as ``openai_compatible``; the ``azure`` plugin and third parties
subclass them (override :meth:`OpenAIAdapter.url`, :meth:`OpenAIAdapter.headers`,
``credential_headers``), so that no plugin imports another.

The body goes upstream as the client sent it, less the Respan params and with the provider's model
name; answers come back untouched, streams chunk by chunk. The adapter reports the answer's usage in
``call.outcome.usage``, decoding only the ``usage`` field of the answer or of the stream's usage chunk.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx2
import msgspec

from .call import Call, Chunk, JSONResult, Result, StreamResult, Target
from .config import ConfigError, ProviderSettings
from .cost import chat_usage
from .errors import GatewayError, StreamInterrupted, UpstreamError
from .providers import AdapterContext, ErrorFields, ProviderAdapter, StreamMark, generic_error_fields
from .sse import DONE

_FINISHED = re.compile(rb'"finish_reason"\s*:\s*"')
_USAGE = re.compile(rb'"usage"\s*:\s*\{')


class _ErrorDetail(msgspec.Struct):
    message: str | None = None
    type: str | None = None
    param: str | None = None
    code: str | int | None = None


class _ErrorBody(msgspec.Struct):
    error: _ErrorDetail


_decode_error = msgspec.json.Decoder(_ErrorBody).decode


class OpenAIAdapter(ProviderAdapter):
    """OpenAI's API: ``/chat/completions`` and ``/embeddings`` under the base URL, a Bearer key."""

    default_base_url = "https://api.openai.com/v1"
    requires_key = True
    credential_headers = frozenset({"authorization"})

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
            return StreamResult(self.relay(call, response, target))
        content = await self.read_body(response, target)
        content_type = response.headers.get("content-type", "")
        if "json" not in content_type:  # e.g. an HTML page from a wrong base_url: the SDK would choke on it
            raise UpstreamError(
                f"provider `{self.id}` answered {response.status_code} with {content_type or 'no content type'}, not JSON",
                status=502, provider=self.id,
            )
        usage = chat_usage(content)
        if usage is not None:
            call.outcome.usage = usage
        return JSONResult(response.status_code, content)

    async def relay(self, call: Call, response: httpx2.Response, target: Target) -> AsyncIterator[Chunk]:
        """The provider's stream as chunks (:meth:`events`), its usage chunk reported in ``call.outcome``."""
        async for chunk in self.events(response, target):
            if _USAGE.search(chunk.data):  # only the usage chunk is decoded (others say "usage": null)
                usage = chat_usage(chunk.data)
                if usage is not None:
                    call.outcome.usage = usage
            yield chunk

    # -- the wire format --------------------------------------------------------------------------
    def stream_mark(self, chunk: Chunk) -> StreamMark | None:
        if chunk.data == DONE:
            return "end"
        return "complete" if _FINISHED.search(chunk.data) else None

    def stream_error(self, chunk: Chunk) -> GatewayError | None:
        if b'"error"' not in chunk.data[:32]:
            return None
        try:
            obj = msgspec.json.decode(chunk.data)
        except msgspec.DecodeError:
            return None
        if not (isinstance(obj, dict) and obj.get("error")):
            return None
        err = obj["error"]
        message = err.get("message") if isinstance(err, dict) else str(err)
        return StreamInterrupted(
            f"provider `{self.id}` reported an error mid-stream: {message or 'unknown error'}",
            provider=self.id,
            code=(err.get("code") if isinstance(err, dict) and isinstance(err.get("code"), str) else "stream_interrupted"),
        )

    def error_fields(self, content: bytes) -> ErrorFields:
        """OpenAI's ``{"error": {"message", "type", "param", "code"}}``; other shapes the generic way."""
        try:
            err = _decode_error(content).error
        except (msgspec.DecodeError, msgspec.ValidationError):
            return generic_error_fields(content)
        if not err.message:  # e.g. {"error": {"detail": ...}} of a compatible server
            return generic_error_fields(content)
        return ErrorFields(message=err.message or "", type=err.type, param=err.param,
                           code=str(err.code) if err.code is not None else None)


class OpenAICompatibleAdapter(OpenAIAdapter):
    """Any server that speaks OpenAI's API at a configured ``base_url`` (vLLM, Ollama, Groq...)."""

    default_base_url = ""
    requires_key = False  # local servers (vLLM, Ollama) take none

    def __init__(self, provider_id: str, settings: ProviderSettings, context: AdapterContext) -> None:
        super().__init__(provider_id, settings, context)
        if not self.base_url:
            raise ConfigError(f"`providers.{provider_id}.base_url`: an openai_compatible provider needs a base_url")


__all__ = ["OpenAIAdapter", "OpenAICompatibleAdapter"]
