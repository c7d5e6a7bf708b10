"""The retry loop: every candidate in order, each retried by the policy, each attempt timed; and the
continuation of a stream that breaks after its first chunk reached the client.

For each attempt ``call.target`` is a fresh copy of the candidate (later stages fill in its key and
endpoint); the loop stops at the first answer, at a failure the policy neither retries nor hands to
the next candidate, or at the total deadline. A stream's answer is wrapped by :meth:`_continuing`
when its endpoint can continue streams and a candidate is left.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec

from respan_gateway import (
    BadRequest, Call, CallNext, Chunk, ConfigError, GatewayError, Result, StreamInterrupted, StreamResult, Target,
    UpstreamError, UpstreamTimeout, UpstreamTooLarge, aclose,
)
from respan_gateway.cost import Usage
from respan_gateway.deadline import Timeouts
from respan_gateway.tokens import estimate

from .policy import Policy, final_error
from .settings import ReliabilitySettings
from .timing import timed_attempt

if TYPE_CHECKING:
    from respan_gateway import Gateway
    from respan_gateway.endpoints import StreamContinuation

__all__ = ["ReliabilityMiddleware", "PREFILL"]

#: The catalog capability of a model that continues a trailing assistant message (a prefill).
PREFILL = "assistant_prefill"


class ReliabilityMiddleware:
    def __init__(self, settings: ReliabilitySettings, gateway: Gateway) -> None:
        self.settings = settings
        self.policy = Policy(settings)
        self.catalog = gateway.catalog
        # Per endpoint kind: how its stream's first token shows, how a broken stream is continued.
        self.first_token = {e.kind: e.first_token for e in gateway.endpoints if e.first_token is not None}
        self.continuation = {e.kind: e.continuation for e in gateway.endpoints if e.continuation is not None}
        self._timeouts: Timeouts | None = None  # every attempt's limit on one timer (made in the serving loop)
        # The section's other bounds are its struct's (see .settings).
        source = gateway.config.source
        for pid, timeouts in settings.providers.items():
            if pid not in gateway.providers:
                raise ConfigError(f"{source}: `reliability.providers.{pid}`: no provider `{pid}` is configured")
            _check_timeouts(timeouts, f"reliability.providers.{pid}", source)
        for slug, model in settings.models.items():
            try:
                self.catalog.resolve(slug)
            except GatewayError:
                raise ConfigError(f"{source}: `reliability.models.{slug}`: unknown model `{slug}`") from None
            _check_timeouts(model, f"reliability.models.{slug}", source)

    def _attempt_timeouts(self, loop: asyncio.AbstractEventLoop) -> Timeouts:
        """The running loop's shared timer of attempt limits (made in the serving loop, on first use)."""
        timeouts = self._timeouts
        if timeouts is None or timeouts.loop is not loop:
            timeouts = self._timeouts = Timeouts(loop)
        return timeouts

    async def __call__(self, call: Call, call_next: CallNext) -> Result:
        s = self.settings
        loop = asyncio.get_running_loop()
        timeouts = self._attempt_timeouts(loop)
        deadline = loop.time() + s.total_timeout
        plan = self.policy.plan(call)
        for name in ("timeout", "first_token_timeout"):
            value = getattr(call.params, name)
            if value is not None and value <= 0:
                raise BadRequest(f"`{name}` must be greater than 0 seconds", param=name)
        first_token = self.first_token.get(call.kind)
        candidates: list[Target | None] = list(call.candidates) or [self._resolve(call)]
        last: GatewayError | None = None
        for index, candidate in enumerate(candidates):
            has_next = index + 1 < len(candidates)
            rules = plan.retries(candidate)
            done = 0
            while True:
                if loop.time() >= deadline:
                    raise final_error(last) if last is not None else UpstreamTimeout(
                        f"no answer within {s.total_timeout:g}s (total_timeout)")
                call.target = _copy(candidate)
                # Hold a stream's head until its first token only when a failure there can be rescued:
                # another candidate, or retries of this one a cut or silent head would use (without
                # retry_params only a 429 status is retried, which comes before any stream).
                hold = has_next or (done < rules.count and not rules.only_rate_limits)
                try:
                    result = await timed_attempt(s, call, call_next, deadline, timeouts, first_token, hold)
                except UpstreamError as exc:
                    last = exc
                    wait = plan.wait(rules, exc, done, has_next)
                    if wait is not None and loop.time() + wait < deadline:
                        plan.spend(wait)
                        done += 1
                        await asyncio.sleep(wait)
                        continue
                    if has_next and self.policy.falls_back(exc):
                        break
                    raise final_error(exc) from None
                except GatewayError as exc:
                    last = exc
                    if has_next and self.policy.falls_back(exc):
                        break
                    raise
                rest = [c for c in candidates[index + 1:] if c is not None]
                continuation = self.continuation.get(call.kind)
                if isinstance(result, StreamResult) and rest and continuation is not None and s.continue_streams:
                    result.chunks = self._continuing(call, call_next, result.chunks, continuation(call), rest, deadline)
                return result
        assert last is not None
        raise final_error(last)

    # -- continuation of a broken stream ----------------------------------------------------------
    async def _continuing(self, call: Call, call_next: CallNext, chunks: AsyncIterator[Chunk],
                          state: StreamContinuation, rest: list[Target], deadline: float) -> AsyncIterator[Chunk]:
        """The stream as the client gets it; when it breaks and can be continued, the continuation."""
        body, changed = dict(call.body), call.body_changed
        answered = call.target
        prior: Usage | None = None
        current = chunks
        try:
            while True:
                delivered = len(state.prefill())
                try:
                    async for chunk in current:
                        out = state.feed(chunk)
                        if out is not None:
                            yield out
                    break
                except UpstreamError as exc:
                    if not self._breaks(exc) or not state.resumable():
                        raise
                    await aclose(current, quiet=True)
                    # What the broken attempt cost: estimated, as it never reported its usage.
                    prior = _add(prior, estimate(call.prompt(), {"choices": [{"message": {"content": state.prefill()[delivered:]}}]}))
                    resumed = await self._resume(call, call_next, state, rest, deadline, body, changed)
                    if resumed is None:
                        call.target = answered
                        raise exc from None  # the client gets the stream's own error, never a fallback's
                    state.resume(prior)
                    current, answered = resumed, call.target
            if prior is not None and call.outcome.usage is not None:
                call.outcome.usage = _add(prior, call.outcome.usage)
        finally:
            await aclose(current, quiet=True)

    def _breaks(self, exc: UpstreamError) -> bool:
        """A cut, stall, malformed event or missing end; or a provider's error event that falls back."""
        if isinstance(exc, UpstreamTooLarge):
            return False
        return isinstance(exc, StreamInterrupted) or (exc.retryable and self.policy.falls_back(exc))

    async def _resume(self, call: Call, call_next: CallNext, state: StreamContinuation, rest: list[Target],
                      deadline: float, body: dict[str, msgspec.Raw], changed: bool) -> AsyncIterator[Chunk] | None:
        """The continuation's stream from the next candidate that takes the prefill; None when none does."""
        loop = asyncio.get_running_loop()
        text = state.prefill()
        while rest and loop.time() < deadline:
            candidate = rest.pop(0)
            if text.strip() and PREFILL not in self.catalog.capabilities(candidate):
                continue
            call.target = _copy(candidate)
            seen = len(call.attempts)
            state.request(call, body)
            try:
                result = await timed_attempt(self.settings, call, call_next, deadline, self._attempt_timeouts(loop),
                                             self.first_token.get(call.kind))
            except GatewayError:
                continue  # recorded on its attempt; a prefill the model refuses is no answer for the client
            finally:
                for attempt in call.attempts[seen:]:
                    attempt.prefill = len(text)
                call.body, call.body_changed = body, changed
            if isinstance(result, StreamResult):
                return result.chunks
        return None

    def _resolve(self, call: Call) -> Target | None:
        """Without routing: the core's target for `model` (None leaves it to the core, which says why)."""
        if call.target is not None:
            return call.target
        if not call.model:
            return None
        return self.catalog.resolve(call.model, call.params.route_provider_override)


def _check_timeouts(timeouts: Any, key: str, source: str) -> None:
    for name in ("first_byte_timeout", "first_token_timeout", "idle_timeout"):
        value = getattr(timeouts, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{source}: `{key}.{name}`: must be greater than 0")


def _add(a: Usage | None, b: Usage) -> Usage:
    if a is None:
        return b
    return Usage(
        prompt_tokens=a.prompt_tokens + b.prompt_tokens, completion_tokens=a.completion_tokens + b.completion_tokens,
        cache_read_tokens=a.cache_read_tokens + b.cache_read_tokens, cache_write_tokens=a.cache_write_tokens + b.cache_write_tokens,
        reasoning_tokens=a.reasoning_tokens + b.reasoning_tokens, estimated=a.estimated or b.estimated,
    )


def _copy(target: Target | None) -> Target | None:
    # Later stages (deployments, credentials) fill in the copy; the candidate stays as routing made it.
    return None if target is None else msgspec.structs.replace(target, extra=dict(target.extra))
