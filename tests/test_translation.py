"""Endpoint.via_chat: a declared endpoint served by providers that speak only chat completions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
import msgspec

from respan_gateway import BadRequest, Call, Chunk, Endpoint, aclose, hookimpl
from respan_gateway.testing import TEST_KEY


class ShoutTranslation:
    """A toy wire format: ``{"model", "say": "..."}`` answered as ``{"shout": "..."}``."""

    def request(self, call: Call) -> dict[str, Any]:
        say = call.get("say")
        if not isinstance(say, str):
            raise BadRequest("`say` must be a string", param="say")
        body: dict[str, Any] = {"model": call.get("model"), "messages": [{"role": "user", "content": say}]}
        if call.stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        return body

    def answer(self, completion: dict[str, Any], call: Call) -> Any:
        return {"shout": completion["choices"][0]["message"]["content"].upper(), "seen_kind": call.kind}

    async def stream(self, chunks: AsyncIterator[Chunk], call: Call) -> AsyncIterator[Chunk]:
        try:
            async for chunk in chunks:
                for choice in chunk.json().get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield Chunk(msgspec.json.encode({"shout": text.upper()}))
        finally:
            await aclose(chunks)


class ShoutPlugin:
    __name__ = "shout_plugin"

    @staticmethod
    @hookimpl
    def register_endpoints(register):  # noqa: ANN001
        register(Endpoint(kind="shout", paths=("/api/shout",), via_chat=ShoutTranslation()))


HEADERS = {"authorization": f"Bearer {TEST_KEY}"}


def test_a_chat_only_provider_serves_a_declared_endpoint(gateway_factory, fake_upstream) -> None:
    server = gateway_factory(plugins=(ShoutPlugin,))
    r = httpx2.post(server.url + "/api/shout", json={"model": "mock/x", "say": "hello there"}, headers=HEADERS)
    assert r.status_code == 200, r.text
    assert r.json()["seen_kind"] == "shout"  # the call keeps its own kind: logs and limits see the endpoint
    assert r.json()["shout"] == r.json()["shout"].upper() and r.json()["shout"]
    # Over a real upstream: the translated chat body is what went out, with the provider's model name.
    r = httpx2.post(server.url + "/api/shout", json={"model": "gpt-test", "say": "hi"}, headers=HEADERS)
    assert r.status_code == 200, r.text
    sent = fake_upstream.requests[-1]
    assert sent.json["messages"] == [{"role": "user", "content": "hi"}]
    assert sent.json["model"] == "gpt-test-upstream" and "say" not in sent.json


def test_streams_are_reframed_and_bad_fields_are_400(gateway_factory) -> None:
    server = gateway_factory(plugins=(ShoutPlugin,))
    with httpx2.stream("POST", server.url + "/api/shout", json={"model": "mock/x", "say": "a b c", "stream": True},
                       headers=HEADERS) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and "".join(msgspec.json.decode(e)["shout"] for e in events[:-1]).strip()
    r = httpx2.post(server.url + "/api/shout", json={"model": "mock/x", "say": 3}, headers=HEADERS)
    assert r.status_code == 400 and r.json()["error"]["param"] == "say"
