"""ExampleAI: an example third-party provider plugin for respan-gateway.

ExampleAI (a made-up provider) speaks OpenAI's chat format at ``<base_url>/chat/completions`` with two
differences a real adapter often meets: the key goes in an ``X-Example-Key`` header, and the API
rejects fields it does not know (here ``parallel_tool_calls`` and ``user``), so the adapter drops them.
Everything an adapter must do is here, in the smallest form: build the upstream request with the
gateway's shared client, report failures as ``UpstreamError`` with the provider's status, say which
headers carry its credentials, tell the stream helper how the provider ends a stream and reports an
error in it, report the answer's usage in ``call.outcome.usage``, and return a ``JSONResult`` for a
complete answer or a ``StreamResult`` of ``Chunk``. See docs/providers.md in respan-gateway.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import msgspec

from respan_gateway import (
    Call, Chunk, GatewayError, JSONResult, ProviderAdapter, ProviderSettings, Result, StreamInterrupted, StreamMark,
    StreamResult, Target, UpstreamError, hookimpl,
)
from respan_gateway.cost import chat_usage
from respan_gateway.hookspecs import RegisterProvider
from respan_gateway.sse import DONE
from respan_gateway.upstream import UpstreamResponse

_decode = msgspec.json.decode
UNSUPPORTED = ("parallel_tool_calls", "user")
_FINISHED = re.compile(rb'"finish_reason"\s*:\s*"')
_USAGE = re.compile(rb'"usage"\s*:\s*\{')  # the usage chunk (the others say "usage": null)


class ExampleSettings(ProviderSettings):
    """The ``[providers.<id>]`` table: the common keys plus ExampleAI's own."""

    # ExampleAI's API region, sent as a header (an example of an adapter-specific setting).
    region: str = "eu"


class ExampleAdapter(ProviderAdapter):
    Settings = ExampleSettings
    default_base_url = "https://api.example.ai/v1"
    # No client may set this header through `extra_headers` (to any provider).
    credential_headers = frozenset({"x-example-key"})
    settings: ExampleSettings

    async def chat(self, call: Call, target: Target) -> Result:
        for field in UNSUPPORTED:  # ExampleAI answers 400 to fields it does not know
            call.pop(field)
        body = call.encoded_body(model=target.upstream_model)
        key = self.api_key(target)  # the request's credentials, else a configured key by weight
        own = {"x-example-region": self.settings.region, **({"x-example-key": key} if key else {})}
        url = (target.base_url or self.base_url).rstrip("/") + "/chat/completions"
        # send(): the call's timeouts; 502/504 on transport failures and errors keeping the provider's
        # status and message, with no secret in them; a stream that is not an event stream is a 502.
        response = await self.send(call, target, url, body, self.request_headers(call, own))
        if call.stream:
            return StreamResult(self._chunks(call, response, target))
        content = await self.read_body(response, target)
        if "json" not in response.headers.get("content-type", ""):
            raise UpstreamError(f"provider `{self.id}` did not answer JSON", status=502, provider=self.id)
        call.outcome.usage = chat_usage(content)  # already OpenAI's shape: the core's reader decodes it
        return JSONResult(200, content)

    async def _chunks(self, call: Call, response: UpstreamResponse, target: Target) -> AsyncIterator[Chunk]:
        # events(): the one upstream SSE loop (a broken connection, an error event or an end before the
        # answer is complete raise StreamInterrupted; the response is always closed), with the hooks below.
        async for chunk in self.events(response, target):
            if _USAGE.search(chunk.data):
                call.outcome.usage = chat_usage(chunk.data) or call.outcome.usage
            yield chunk

    def stream_mark(self, chunk: Chunk) -> StreamMark | None:
        if chunk.data == DONE:
            return "end"  # the end marker (not relayed: the gateway writes its own)
        return "complete" if _FINISHED.search(chunk.data) else None

    def stream_error(self, chunk: Chunk) -> GatewayError | None:
        if b'"error"' not in chunk.data:
            return None
        error = _decode(chunk.data).get("error")
        message = error.get("message") if isinstance(error, dict) else error
        return StreamInterrupted(f"provider `{self.id}` failed mid-stream: {message}", provider=self.id) if error else None


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    register("example", ExampleAdapter)
