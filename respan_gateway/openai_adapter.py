"""The OpenAI wire adapter: a public base for every provider that speaks OpenAI's API.

The ``openai`` plugin registers :class:`OpenAIAdapter` as ``openai`` and
:class:`OpenAICompatibleAdapter` as ``openai_compatible``; the ``azure`` plugin and third parties
subclass them (override :meth:`OpenAIAdapter.url`, :meth:`OpenAIAdapter.headers`,
``credential_headers``), so that no plugin imports another.

The body goes upstream as the client sent it, less the Respan params and with the provider's model
name; answers come back untouched, streams chunk by chunk. The adapter reports the answer's usage in
``call.outcome.usage``, decoding only the ``usage`` field of an answer. A chat stream's chunks are
decoded once each, typed (:class:`~respan_gateway.openai_chat.ChatChunk`, kept in ``Chunk.parsed``
for the readers after: reliability's JSON check, the answer's accumulator): their end and usage are
read from that; a chunk of another shape is read from its bytes, as it always was.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import msgspec

from .call import Call, Chunk, JSONResult, Result, StreamResult, Target
from .config import ConfigError, ProviderSettings
from .cost import chat_usage, chat_usage_of, usage_from
from .errors import GatewayError, StreamInterrupted, UpstreamError
from .openai_chat import ChatChunk, decode_chat_chunk
from .providers import AdapterContext, ErrorFields, ProviderAdapter, StreamMark, generic_error_fields
from .sse import DONE
from .upstream import UpstreamResponse

_FINISHED = re.compile(rb'"finish_reason"\s*:\s*"')
_USAGE = re.compile(rb'"usage"\s*:\s*\{')


def _set(data: bytes, key: bytes, pattern: re.Pattern[bytes]) -> bool:
    """Whether ``pattern`` (``key``, a colon, a value) is in ``data``: searched only when some ``key`` is
    not followed by ``:null``, which most chunks say of every key (a regex search per chunk costs more;
    ``partition`` is the cheapest substring test on bytes: ``find`` parses its arguments from a format)."""
    rest = data
    while True:
        _, found, rest = rest.partition(key)
        if not found:
            return False
        if rest[:5] != b":null":
            return pattern.search(data) is not None


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

    async def responses(self, call: Call, target: Target) -> Result:
        """OpenAI's Responses API, natively: the body as the client sent it (less the Respan params,
        with the provider's model name), the answer untouched, a stream relayed event by event."""
        model = self.responses_model(target)
        body = call.encoded_body(model=model) if model != call.model else call.encoded_body()
        response = await self.send(call, target, self.responses_url(target), body, self.headers(call, target))
        if call.stream:
            return StreamResult(self.relay_responses(call, response, target))
        content = await self.read_body(response, target)
        if "json" not in response.headers.get("content-type", ""):
            raise UpstreamError(f"provider `{self.id}` answered {response.status_code} with "
                                f"{response.headers.get('content-type') or 'no content type'}, not JSON", status=502, provider=self.id)
        try:
            usage = usage_from(_decode_usage(content).usage)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise UpstreamError(f"provider `{self.id}` answered {response.status_code} with something that is not "
                                "a response object", status=502, provider=self.id) from None
        if usage is not None:
            call.outcome.usage = usage
        return JSONResult(response.status_code, content)

    def responses_url(self, target: Target) -> str:
        return self.url(target, "/responses")

    def responses_model(self, target: Target) -> str:
        """The ``model`` of a Responses request upstream (Azure: the deployment)."""
        return target.upstream_model

    async def relay_responses(self, call: Call, response: UpstreamResponse, target: Target) -> AsyncIterator[Chunk]:
        """A Responses stream as it arrives; the terminal event's usage goes in ``call.outcome``, and a
        ``response.failed`` is relayed, then raised, so the client's stream ends with an error event."""
        async for chunk in self.events(response, target, mark=_responses_mark, error=self._responses_error):
            if chunk.event is None:  # named as OpenAI names them, whatever a compatible server sent
                chunk = Chunk(chunk.data, _event_type(chunk.data))
            if chunk.event in _TERMINAL:
                terminal = _decode_terminal(chunk.data)
                usage = usage_from((terminal.response or {}).get("usage"))
                if usage is not None:
                    call.outcome.usage = usage
                yield chunk
                if chunk.event == "response.failed":
                    error = (terminal.response or {}).get("error") or {}
                    raise StreamInterrupted(
                        f"provider `{self.id}` failed the response: {error.get('message') or 'unknown error'}",
                        provider=self.id, code=error.get("code") if isinstance(error.get("code"), str) else "stream_interrupted")
                continue
            yield chunk

    def _responses_error(self, chunk: Chunk) -> GatewayError | None:
        if _event_type(chunk.data) != "error":
            return None
        try:
            obj = msgspec.json.decode(chunk.data)
        except msgspec.DecodeError:
            obj = {}
        error = obj.get("error") if isinstance(obj.get("error"), dict) else obj
        code = error.get("code")
        return StreamInterrupted(f"provider `{self.id}` reported an error mid-stream: {error.get('message') or 'unknown error'}",
                                 provider=self.id, code=code if isinstance(code, str) else "stream_interrupted")

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

    def relay(self, call: Call, response: UpstreamResponse, target: Target) -> AsyncIterator[Chunk]:
        """The provider's stream as chunks (:meth:`events`), its usage chunk reported in ``call.outcome``."""
        outcome = call.outcome

        def seen(chunk: Chunk) -> None:
            parsed = chunk.parsed
            if isinstance(parsed, ChatChunk):  # decoded by stream_mark
                if parsed.usage is None:
                    return
                usage = chat_usage_of(parsed.usage)
            elif _set(chunk.data, b'"usage"', _USAGE):  # only the usage chunk is decoded (others say "usage": null)
                usage = chat_usage(chunk.data)
            else:
                return
            if usage is not None:
                outcome.usage = usage

        return self.events(response, target, seen=seen)

    # -- the wire format --------------------------------------------------------------------------
    def stream_mark(self, chunk: Chunk) -> StreamMark | None:
        """``[DONE]`` ends the stream; a chunk with a choice's ``finish_reason`` completes the answer.

        The chunk's first full read: it is decoded here, typed, into ``chunk.parsed``. A chunk of
        another shape (DecodeError, ValidationError) keeps ``parsed`` None and is told by its bytes."""
        data = chunk.data
        if data == DONE:
            return "end"
        try:
            parsed = chunk.parsed = decode_chat_chunk(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return "complete" if _set(data, b'"finish_reason"', _FINISHED) else None
        for choice in parsed.choices or ():
            if choice.finish_reason is not None:  # as the byte test: any string, "" too
                return "complete"
        return None

    def stream_error(self, chunk: Chunk) -> GatewayError | None:
        if not chunk.data[:32].partition(b'"error"')[1]:
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


class OpenAICompatibleSettings(ProviderSettings):
    # The server has OpenAI's Responses API (`/responses`): pass /api/responses through natively;
    # by default it is served through its chat completions (vLLM, Ollama, Groq... differ in what they have).
    responses_api: bool = False


class OpenAICompatibleAdapter(OpenAIAdapter):
    """Any server that speaks OpenAI's API at a configured ``base_url`` (vLLM, Ollama, Groq...)."""

    Settings = OpenAICompatibleSettings
    default_base_url = ""
    requires_key = False  # local servers (vLLM, Ollama) take none

    def __init__(self, provider_id: str, settings: OpenAICompatibleSettings, context: AdapterContext) -> None:
        super().__init__(provider_id, settings, context)
        if not self.base_url:
            raise ConfigError(f"`providers.{provider_id}.base_url`: an openai_compatible provider needs a base_url")
        if not settings.responses_api:
            # No `responses` method: the gateway serves the Responses API through `chat` (Endpoint.via_chat).
            self.responses = None  # type: ignore[assignment]


class _EventType(msgspec.Struct):
    type: str = ""  # the one field read of most Responses events


class _Terminal(msgspec.Struct):
    type: str = ""
    response: dict | None = None


class _Usage(msgspec.Struct):
    usage: dict | None = None


_decode_event_type = msgspec.json.Decoder(_EventType).decode
_decode_terminal = msgspec.json.Decoder(_Terminal).decode
_decode_usage = msgspec.json.Decoder(_Usage).decode
_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _event_type(data: bytes) -> str:
    try:
        return _decode_event_type(data).type
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise StreamInterrupted("the provider sent a malformed stream event") from None


def _responses_mark(chunk: Chunk) -> StreamMark | None:
    if chunk.data == DONE:
        return "end"
    return "last" if (chunk.event or _event_type(chunk.data)) in _TERMINAL else None


__all__ = ["OpenAIAdapter", "OpenAICompatibleAdapter"]
