"""request_breakdown: the call's tokens, cost, timings and content in the answer itself (SPEC section 8).

With the Respan param ``request_breakdown: true``, an answer of an OpenAI-shaped endpoint (chat,
embeddings, responses) gets a ``request_breakdown`` field, and a stream one extra event at its end, in
the endpoint's framing (its accumulator's ``annex``: a chat chunk ``id: "request_breakdown"`` before
``[DONE]``; a ``request_breakdown`` field on the ``response.completed`` event). The figures are the core's (``Gateway.settle``: who answered, the one usage normalisation
and the one cost function), the same that log records and metrics show; ``log_id`` is the call's log
record (``call.outcome.log_id``) when the logging plugin names one. See README.md beside this file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from respan_gateway import Call, CallNext, Chunk, Gateway, JSONResult, Result, hookimpl
from respan_gateway.hookspecs import RegisterMiddleware
from respan_gateway.translate.responses import output_message
from respan_gateway.params import coerce_metadata

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode


class RequestBreakdown:
    def __init__(self, settings: object, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, call: Call, call_next: CallNext) -> Result:
        result = await call_next(call)
        if not call.params.request_breakdown or result.status >= 400:
            return result
        # What the endpoint's wire format carries: a field on answers of OpenAI's shapes (chat,
        # embeddings, responses), an extra event on streams whose accumulator can write one.
        endpoint = self.gateway.endpoint_for(call.kind)
        if endpoint is None:
            return result
        if isinstance(result, JSONResult):
            data = result.data
            if endpoint.style == "openai" and isinstance(data, dict):
                call.outcome.answer = data  # observers see the provider's answer, without the field
                self.gateway.settle(call, data)
                result.data = {**data, "request_breakdown": breakdown(call, data, result.status)}
        elif endpoint.accumulator is not None:
            accumulator = endpoint.accumulator()
            if callable(getattr(accumulator, "annex", None)):
                result.chunks = self._append(call, result.chunks, result.status, accumulator)
        return result

    async def _append(self, call: Call, chunks: AsyncIterator[Chunk], status: int, acc: Any) -> AsyncIterator[Chunk]:
        """The stream, then (when it ended well) the breakdown, in the endpoint's framing: on the
        answer's last event, or one more event after it (the accumulator's ``holds``/``annex``)."""
        held: Chunk | None = None
        try:
            async for chunk in chunks:
                acc.feed(chunk)
                if held is not None:  # not the last after all
                    yield held
                    held = None
                if acc.holds(chunk):
                    held = chunk
                else:
                    yield chunk
        except Exception:  # an error after the held event: it goes out, then the error (never on a cancel)
            if held is not None:
                yield held
            raise
        finally:
            with contextlib.suppress(Exception):
                await chunks.aclose()  # type: ignore[attr-defined]
        answer = acc.answer() or {}
        self.gateway.settle(call, answer)
        for chunk in acc.annex("request_breakdown", breakdown(call, answer, status), held):
            yield chunk


def breakdown(call: Call, answer: dict[str, Any], status: int) -> dict[str, Any]:
    """The ``request_breakdown`` object (SPEC section 8); cost USD, latency and routing_time seconds."""
    o, p = call.outcome, call.params
    content = not p.disable_log
    usage = o.usage
    full_request = call.request_without_params()
    return {
        "prompt_tokens": usage.prompt_tokens if usage is not None else 0,
        "completion_tokens": usage.completion_tokens if usage is not None else 0,
        "cost": o.cost,
        "prompt_messages": call.prompt() if content else None,
        "completion_message": _message(answer) if content else None,
        "model": o.model,
        "cached": o.cache_hit,
        "timestamp": _iso(call.timings.started_at + o.latency),
        "status_code": status,
        "stream": call.stream,
        "latency": o.latency,
        "time_to_first_token": o.time_to_first_token,
        "routing_time": o.routing_time,
        "full_request": _decode(full_request) if content and full_request is not None else None,
        "metadata": coerce_metadata(p.metadata) or {},
        "usage_estimated": usage.estimated if usage is not None else False,
        "log_id": o.log_id,
        "category": None,
        "scores": {},
        "sentiment_score": 0,
    }


def _message(answer: dict[str, Any]) -> Any:
    """The answer's completion as a chat message (a Responses answer's output made one, readable)."""
    choices = answer.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0].get("message")
    if isinstance(answer.get("output"), list):
        return output_message(answer["output"])
    return None


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat().replace("+00:00", "Z")


@hookimpl
def register_middlewares(register: RegisterMiddleware) -> None:
    # After params (and inside logging, whose log id is named by then), outside the cache, routing and
    # reliability: the breakdown is that of the whole call, cache hits, retries and fallbacks included.
    register("request_breakdown", RequestBreakdown, order=250)


__all__ = ["RequestBreakdown", "breakdown"]
