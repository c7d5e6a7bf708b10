"""Provider ``anthropic`` (Claude, Messages API) and the native endpoint ``POST /api/anthropic/v1/messages``.

The adapter serves two endpoint kinds:

- ``chat``: the OpenAI chat body is translated to a Messages request and the answer back to OpenAI's
  shapes, streams included (:mod:`.translate`, mapping of ``wire-formats.md`` 4.6);
- ``anthropic_messages``: the native endpoint; the body goes upstream as the client sent it (less the
  Respan params, with the provider's model name) and the answer, stream or not, comes back unchanged.

Errors keep the provider's status and message; a mid-stream ``error`` event ends the client's stream
with an error event in the envelope of the endpoint the client called.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
import msgspec

from respan_gateway import Call, Chunk, Endpoint, JSONResult, ProviderAdapter, ProviderSettings, Result, StreamInterrupted, StreamResult, Target, UpstreamError, hookimpl
from respan_gateway.hookspecs import RegisterEndpoint, RegisterProvider
from respan_gateway.openai_chat import include_usage
from respan_gateway.sse import read_events

from .accumulator import MessagesAccumulator
from .translate import StreamTranslator, message_to_openai, request_to_anthropic, stream_error

_decode = msgspec.json.decode
_encode = msgspec.json.Encoder().encode

# Headers a client may not set upstream through `extra_headers`.
NATIVE_PATH = "/api/anthropic/v1/messages"


class AnthropicSettings(ProviderSettings):
    # Sent upstream as `anthropic-version` (whatever version the client sent to the native endpoint).
    anthropic_version: str = "2023-06-01"
    # `max_tokens` when an OpenAI chat request names none (Anthropic requires one).
    default_max_tokens: int = 4096
    # `anthropic-beta` flags sent on every request (the native endpoint also forwards the client's).
    beta: list[str] = []


class AnthropicAdapter(ProviderAdapter):
    requires_key = True
    Settings = AnthropicSettings
    default_base_url = "https://api.anthropic.com"
    settings: AnthropicSettings

    # -- endpoint kinds ---------------------------------------------------------------------------
    async def chat(self, call: Call, target: Target) -> Result:
        body = {k: _decode(v) for k, v in call.body.items()}
        upstream = request_to_anthropic(body, target.upstream_model, self.settings.default_max_tokens)
        response = await self._send(call, target, _encode(upstream))
        if call.stream:
            return StreamResult(self._translate_stream(response, target, include_usage(call)))
        message = await self._json(response, target)
        return JSONResult(200, data=message_to_openai(message))

    async def anthropic_messages(self, call: Call, target: Target) -> Result:
        if target.upstream_model != call.get("model"):
            call.set("model", target.upstream_model)
        response = await self._send(call, target, call.encoded_body(), client_beta=call.headers.get("anthropic-beta"))
        if call.stream:
            return StreamResult(self._relay(response, target))
        await self._json(response, target)
        return JSONResult(200, response.content)

    # -- the exchange -----------------------------------------------------------------------------
    def headers(self, call: Call, target: Target, client_beta: str | None = None) -> dict[str, str]:
        own = {"anthropic-version": self.settings.anthropic_version}
        betas = [*self.settings.beta, *(b.strip() for b in (client_beta or "").split(",") if b.strip())]
        if betas:
            own["anthropic-beta"] = ",".join(dict.fromkeys(betas))
        key = self.key_for(target)
        if key:
            own["x-api-key"] = key
        return self.request_headers(call, own)

    async def _send(self, call: Call, target: Target, body: bytes, client_beta: str | None = None) -> httpx2.Response:
        url = (target.base_url or self.base_url).rstrip("/") + "/v1/messages"
        return await self.send(call, target, url, body, self.headers(call, target, client_beta))

    async def _json(self, response: httpx2.Response, target: Target) -> dict[str, Any]:
        message = await self.read_json(response, target)
        if message.get("type") != "message":
            raise UpstreamError(f"provider `{self.id}` answered 200 with something that is not a Message", status=502, provider=self.id)
        return message

    async def _events(self, response: httpx2.Response, target: Target) -> AsyncIterator[tuple[Chunk, dict[str, Any]]]:
        """The upstream's events, decoded; a broken connection raises StreamInterrupted."""
        try:
            async for chunk in read_events(response.aiter_bytes()):
                try:
                    event = _decode(chunk.data)
                except msgspec.DecodeError:
                    raise StreamInterrupted(f"provider `{self.id}` sent a malformed stream event", provider=self.id) from None
                if isinstance(event, dict):
                    yield chunk, event
        except httpx2.TransportError as exc:
            err = self.transport_error(exc, target)
            raise StreamInterrupted(f"the stream from provider `{self.id}` broke off: {err.message}", provider=self.id) from None
        finally:
            await response.aclose()

    async def _translate_stream(self, response: httpx2.Response, target: Target, usage: bool) -> AsyncIterator[Chunk]:
        translator = StreamTranslator(self.id, usage)
        async for _, event in self._events(response, target):
            for chunk in translator.feed(event):
                yield chunk
            if translator.done:
                return
        for chunk in translator.close():
            yield chunk

    async def _relay(self, response: httpx2.Response, target: Target) -> AsyncIterator[Chunk]:
        finished = False  # message_delta seen: complete even without message_stop
        async for chunk, event in self._events(response, target):
            kind = event.get("type")
            if kind == "error":
                raise stream_error(event, self.id)
            yield Chunk(chunk.data, chunk.event or kind)
            if kind == "message_stop":
                return
            finished = finished or kind == "message_delta"
        if finished:
            return
        raise StreamInterrupted(f"provider `{self.id}` ended the stream before the answer was complete", provider=self.id)


def _native_defaults(call: Call) -> None:
    if "max_tokens" not in call.body:
        call.set("max_tokens", 4096)  # SPEC section 1: the native endpoint's default


#: ``POST /api/anthropic/v1/messages``: Anthropic's Messages API, errors in Anthropic's envelope.
NATIVE_ENDPOINT = Endpoint(
    kind="anthropic_messages", paths=(NATIVE_PATH,), style="anthropic", prepare=_native_defaults,
    accumulator=MessagesAccumulator, own_fields=frozenset({"metadata"}),
)


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    register("anthropic", AnthropicAdapter)


@hookimpl
def register_endpoints(register: RegisterEndpoint) -> None:
    register(NATIVE_ENDPOINT)
