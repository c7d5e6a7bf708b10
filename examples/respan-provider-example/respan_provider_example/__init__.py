"""ExampleAI: an example third-party provider plugin for respan-gateway.

ExampleAI (a made-up provider) speaks OpenAI's chat format at ``<base_url>/chat/completions`` with two
differences a real adapter often meets: the key goes in an ``X-Example-Key`` header, and the API
rejects fields it does not know (here ``parallel_tool_calls`` and ``user``), so the adapter drops them.
Everything an adapter must do is here, in the smallest form: build the upstream request with the
gateway's shared client, report failures as ``UpstreamError`` with the provider's status, and return a
``JSONResult`` for a complete answer or a ``StreamResult`` of ``Chunk`` for a stream that ends with an
error if the provider breaks off. See docs/providers.md in respan-gateway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
import msgspec

from respan_gateway import (
    Call, Chunk, JSONResult, ProviderAdapter, ProviderSettings, Result, StreamInterrupted, StreamResult, Target,
    UpstreamError, hookimpl,
)
from respan_gateway.sse import DONE

_decode = msgspec.json.decode
UNSUPPORTED = ("parallel_tool_calls", "user")


class ExampleSettings(ProviderSettings):
    """The ``[providers.<id>]`` table: the common keys plus ExampleAI's own."""

    # ExampleAI's API region, sent as a header (an example of an adapter-specific setting).
    region: str = "eu"


class ExampleAdapter(ProviderAdapter):
    Settings = ExampleSettings
    default_base_url = "https://api.example.ai/v1"
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
            return StreamResult(self._chunks(response, target))
        content = await self.read_body(response, target)
        if "json" not in response.headers.get("content-type", ""):
            raise UpstreamError(f"provider `{self.id}` did not answer JSON", status=502, provider=self.id)
        return JSONResult(200, content)  # already OpenAI's shape, usage included

    async def _chunks(self, response: httpx2.Response, target: Target) -> AsyncIterator[Chunk]:
        finished = False
        try:
            async for event in self.events(response):  # bounded by [upstream] max_event_bytes
                if event.data == DONE:
                    break
                data = _decode(event.data)
                if isinstance(data, dict) and data.get("error"):
                    message = data["error"].get("message") if isinstance(data["error"], dict) else data["error"]
                    raise StreamInterrupted(f"provider `{self.id}` failed mid-stream: {message}", provider=self.id)
                finished = finished or any(c.get("finish_reason") for c in data.get("choices") or [])
                yield Chunk(event.data)
        except httpx2.TransportError as exc:
            raise StreamInterrupted(f"the stream from `{self.id}` broke off: {self.transport_error(exc, target).message}",
                                    provider=self.id) from None
        finally:
            await response.aclose()
        if not finished:  # never present a truncated answer as a complete one
            raise StreamInterrupted(f"provider `{self.id}` ended the stream early", provider=self.id)


@hookimpl
def register_providers(register: Any) -> None:
    register("example", ExampleAdapter)
