"""Provider ``mock``: canned answers, to try the gateway without any provider key.

Like LiteLLM's mock responses: the answer is the provider's ``response`` setting, or the request's
``mock_response`` field. Streaming works (the answer is sent word by word, ``chunk_delay`` seconds
apart) and so does ``stream_options.include_usage``. Token counts are word counts: a stand-in, not
a tokenizer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from respan_gateway import BadRequest, Call, Chunk, JSONResult, ProviderAdapter, ProviderSettings, Result, StreamResult, Target, hookimpl
from respan_gateway.cost import Usage
from respan_gateway.hookspecs import RegisterProvider

_encode = msgspec.json.Encoder().encode


class MockSettings(ProviderSettings):
    response: str = "This is a mock response from respan-gateway. Point a provider at a real model to get real answers."
    # Seconds between streamed chunks.
    chunk_delay: float = 0.0


class MockAdapter(ProviderAdapter):
    Settings = MockSettings

    async def chat(self, call: Call, target: Target) -> Result:
        text = call.get("mock_response", self.settings.response)
        if not isinstance(text, str):
            raise BadRequest("`mock_response` must be a string", param="mock_response")
        prompt_tokens = _count_words(call.get("messages", []))
        completion_id = f"chatcmpl-mock-{call.request_id}"
        created = int(time.time())
        if call.stream:
            options = call.get("stream_options") or {}
            include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
            return StreamResult(self._stream(call, completion_id, created, target.upstream_model, text, prompt_tokens, include_usage))
        usage = _usage(prompt_tokens, len(text.split()))
        call.outcome.usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=len(text.split()))
        return JSONResult(200, _encode({
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": target.upstream_model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }],
            "usage": usage,
        }))

    async def _stream(self, call: Call, cid: str, created: int, model: str, text: str, prompt_tokens: int, include_usage: bool) -> AsyncIterator[Chunk]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> Chunk:
            body: dict[str, Any] = {
                "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                body["usage"] = None
            return Chunk(_encode(body))

        words = text.split(" ")
        yield chunk({"role": "assistant", "content": "", "refusal": None})
        for i, word in enumerate(words):
            if self.settings.chunk_delay:
                await asyncio.sleep(self.settings.chunk_delay)
            yield chunk({"content": word if i == 0 else " " + word})
        yield chunk({}, "stop")
        call.outcome.usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=len(text.split()))
        if include_usage:
            yield Chunk(_encode({
                "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [], "usage": _usage(prompt_tokens, len(text.split())),
            }))


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _count_words(messages: Any) -> int:
    total = 0
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content.split())
        elif isinstance(content, list):
            total += sum(len(p.get("text", "").split()) for p in content if isinstance(p, dict))
    return total


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    register("mock", MockAdapter)
