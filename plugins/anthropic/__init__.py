"""Provider ``anthropic`` (Claude, Messages API) and the native endpoint ``POST /api/anthropic/v1/messages``.

The adapter serves two endpoint kinds:

- ``chat``: the OpenAI chat body is translated to a Messages request and the answer back to OpenAI's
  shapes, streams included (:mod:`respan_gateway.translate.anthropic`, mapping of ``wire-formats.md`` 4.6);
- ``anthropic_messages``: the native endpoint; the body goes upstream as the client sent it (less the
  Respan params, with the provider's model name) and the answer, stream or not, comes back unchanged.

Errors keep the provider's status and message; a mid-stream ``error`` event ends the client's stream
with an error event in the envelope of the endpoint the client called.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from respan_gateway import (
    Call, Chunk, Endpoint, ErrorFields, GatewayError, JSONResult, ProviderAdapter, ProviderSettings, Result,
    StreamInterrupted, StreamMark, StreamResult, Target, UpstreamError, hookimpl,
)
from respan_gateway.hookspecs import RegisterEndpoint, RegisterProvider
from respan_gateway.openai_chat import include_usage
from respan_gateway.providers import generic_error_fields
from respan_gateway.translate.messages import MESSAGES_VIA_CHAT

from respan_gateway.translate.anthropic import StreamTranslator, message_to_openai, normalised_usage, request_to_anthropic, stream_error
from respan_gateway.upstream import UpstreamResponse

from .accumulator import MessagesAccumulator, cacheable, replay

_decode = msgspec.json.decode
_encode = msgspec.json.Encoder().encode

NATIVE_PATH = "/api/anthropic/v1/messages"


class AnthropicSettings(ProviderSettings):
    # Sent upstream as `anthropic-version` (whatever version the client sent to the native endpoint).
    anthropic_version: str = "2023-06-01"
    # `max_tokens` when an OpenAI chat request names none (Anthropic requires one).
    default_max_tokens: int = 4096
    # `anthropic-beta` flags sent on every request (the native endpoint also forwards the client's).
    beta: list[str] = []


class _EventType(msgspec.Struct):
    type: str | None = None  # the one field read of every stream event; the rest is skipped


class _ErrorDetail(msgspec.Struct):
    message: str = ""
    type: str | None = None


class _ErrorBody(msgspec.Struct):
    error: _ErrorDetail


_decode_event_type = msgspec.json.Decoder(_EventType).decode
_decode_error = msgspec.json.Decoder(_ErrorBody).decode


class AnthropicAdapter(ProviderAdapter):
    requires_key = True
    Settings = AnthropicSettings
    default_base_url = "https://api.anthropic.com"
    credential_headers = frozenset({"x-api-key"})
    # A trailing assistant message is a prefill: the answer continues it (wire-formats 4).
    capabilities = frozenset({"assistant_prefill"})
    settings: AnthropicSettings

    # -- endpoint kinds ---------------------------------------------------------------------------
    async def chat(self, call: Call, target: Target) -> Result:
        body = {k: _decode(v) for k, v in call.body.items()}
        upstream = request_to_anthropic(body, target.upstream_model, self.settings.default_max_tokens)
        response = await self._send(call, target, _encode(upstream))
        if call.stream:
            return StreamResult(self._translate_stream(call, response, target, include_usage(call)))
        message = await self._json(response, target)
        call.outcome.usage = normalised_usage(message.get("usage") or {})
        return JSONResult(200, data=message_to_openai(message))

    async def anthropic_messages(self, call: Call, target: Target) -> Result:
        if target.upstream_model != call.get("model"):
            call.set("model", target.upstream_model)
        response = await self._send(call, target, call.encoded_body(), client_beta=call.headers.get("anthropic-beta"))
        if call.stream:
            return StreamResult(self._relay(call, response, target))
        message = await self._json(response, target)
        call.outcome.usage = normalised_usage(message.get("usage") or {})
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

    async def _send(self, call: Call, target: Target, body: bytes, client_beta: str | None = None) -> UpstreamResponse:
        url = (target.base_url or self.base_url).rstrip("/") + "/v1/messages"
        return await self.send(call, target, url, body, self.headers(call, target, client_beta))

    async def _json(self, response: UpstreamResponse, target: Target) -> dict[str, Any]:
        return self._message(await self.read_json(response, target))

    def _message(self, message: dict[str, Any]) -> dict[str, Any]:
        if message.get("type") != "message":
            raise UpstreamError(f"provider `{self.id}` answered 200 with something that is not a Message", status=502, provider=self.id)
        return message

    # -- the wire format --------------------------------------------------------------------------
    def stream_mark(self, chunk: Chunk) -> StreamMark | None:
        kind = _event_type(chunk, self.id)
        if kind == "message_stop":
            return "last"
        return "complete" if kind == "message_delta" else None  # the stop reason: complete even without message_stop

    def stream_error(self, chunk: Chunk) -> GatewayError | None:
        if _event_type(chunk, self.id) != "error":
            return None
        event = _decode(chunk.data)
        return stream_error(event if isinstance(event, dict) else {}, self.id)

    def error_fields(self, content: bytes) -> ErrorFields:
        """Anthropic's ``{"type": "error", "error": {"type", "message"}}``; other shapes the generic way."""
        try:
            err = _decode_error(content).error
        except (msgspec.DecodeError, msgspec.ValidationError):
            return generic_error_fields(content)
        return ErrorFields(message=err.message, type=err.type) if err.message else generic_error_fields(content)

    # -- streams ----------------------------------------------------------------------------------
    async def _translate_stream(self, call: Call, response: UpstreamResponse, target: Target, usage: bool) -> AsyncIterator[Chunk]:
        translator = StreamTranslator(self.id, usage)
        async for chunk in self.events(response, target):
            event = _decode(chunk.data)
            for out in translator.feed(event if isinstance(event, dict) else {}):
                yield out
            if translator.finished:
                call.outcome.usage = normalised_usage(translator.usage)
            if translator.done:
                return
        for out in translator.close():
            yield out

    async def _relay(self, call: Call, response: UpstreamResponse, target: Target) -> AsyncIterator[Chunk]:
        usage: dict[str, Any] = {}
        async for chunk in self.events(response, target):
            kind = _event_type(chunk, self.id)
            if kind == "message_start" or kind == "message_delta":
                event = _decode(chunk.data)
                counts = (event.get("message") or {}).get("usage") if kind == "message_start" else event.get("usage")
                usage.update({k: v for k, v in (counts or {}).items() if v is not None})
                if kind == "message_delta":
                    call.outcome.usage = normalised_usage(usage)
            yield Chunk(chunk.data, chunk.event or kind)


def _event_type(chunk: Chunk, provider: str) -> str | None:
    """The ``type`` of a stream event (decoding nothing else); a malformed event breaks the stream."""
    try:
        return _decode_event_type(chunk.data).type
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise StreamInterrupted(f"provider `{provider}` sent a malformed stream event", provider=provider) from None


def _native_defaults(call: Call) -> None:
    if "max_tokens" not in call.body:
        call.set("max_tokens", 4096)  # SPEC section 1: the native endpoint's default


def first_token(chunk: Chunk) -> bool:
    """Whether a Messages stream event carries the answer's first token: a delta (text, tool input,
    thinking), a tool call's start, the stop reason, or an error (message_start and ping do not)."""
    kind = chunk.event
    if kind in ("content_block_delta", "message_delta", "message_stop", "error"):
        return True
    return kind == "content_block_start" and b'tool_use"' in chunk.data


#: ``POST /api/anthropic/v1/messages``: Anthropic's Messages API, errors in Anthropic's envelope. A model
#: of a provider whose adapter speaks only chat is served through the core's translation.
NATIVE_ENDPOINT = Endpoint(
    kind="anthropic_messages", paths=(NATIVE_PATH,), style="anthropic", prepare=_native_defaults,
    accumulator=MessagesAccumulator, own_fields=frozenset({"metadata"}), via_chat=MESSAGES_VIA_CHAT,
    first_token=first_token,
    # A response cache replays a stored message as a stream, and keys on the betas (they change the answer).
    replay=replay, cacheable=cacheable, key_headers=("anthropic-beta",),
)


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    register("anthropic", AnthropicAdapter)


@hookimpl
def register_endpoints(register: RegisterEndpoint) -> None:
    register(NATIVE_ENDPOINT)
