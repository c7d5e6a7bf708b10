"""Reliability: retries, fallbacks and timeouts, so that an upstream failure is never a silent one.

Middleware ``reliability`` (order 800) walks the candidates routing put on ``call.candidates``
(without routing: the one target the core resolves), setting ``call.target`` for each attempt:

- **Retries** of the same candidate on retryable errors (connection, timeout, 408, 409, 429, 5xx, 529)
  when the request has ``retry_params``; without them only a 429 is retried, and only when there is
  no fallback to go to. Waits double from ``retry_after`` with jitter, are never shorter than the
  provider's ``Retry-After``, and all waits of a request share one ``retry_budget``.
- **Fallbacks**: once a candidate failed for good with a fallback trigger (connection, timeout,
  401/403/404/408/409/429, 5xx; anything with ``fallback_on = "any"``), the next candidate.
- **Timeouts** per attempt: first byte (a stream's first chunk; a complete answer otherwise) and,
  for streams, the idle gap between chunks; a total deadline over the whole request. The connect
  timeout is the core's (``[upstream]`` / ``[providers.<id>]``).
- **Streams** are failed over only before their first chunk: that chunk is fetched here, before the
  client's response starts. After it, a failure, a stall or a malformed chunk ends the client's stream
  with an explicit error event.

Every attempt is on ``call.attempts`` (the core records it; this stage adds what only it sees: timeouts
and stream failures). See README.md and docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import msgspec

from respan_gateway import (
    Attempt,
    BadRequest,
    Call,
    CallNext,
    Chunk,
    ConfigError,
    GatewayError,
    Result,
    Settings,
    StreamInterrupted,
    StreamResult,
    Target,
    UpstreamError,
    UpstreamTimeout,
    hookimpl,
)

__all__ = ["ReliabilitySettings", "ProviderTimeouts", "ReliabilityMiddleware"]

# Validates a chunk's JSON without building any object.
_check_json = msgspec.json.Decoder(msgspec.Raw).decode
# Statuses that fall back by default besides 5xx: rate limits, conflicts, and the provider's key or model.
_FALLBACK_STATUSES = frozenset({401, 403, 404, 408, 409, 429})


class ProviderTimeouts(Settings):
    first_byte_timeout: float | None = None
    idle_timeout: float | None = None


class ReliabilitySettings(Settings):
    # `retry_params` without `num_retries` / `retry_after`.
    num_retries: int = 3
    retry_after: float = 0.2
    # A request's `num_retries` is capped at this.
    max_retries: int = 10
    # Without `retry_params`: retries of an upstream 429 when there is no fallback, first wait (doubles).
    rate_limit_retries: int = 2
    rate_limit_backoff: float = 1.0
    # Longest computed backoff of one retry (a provider's Retry-After may still ask for more).
    max_backoff: float = 10.0
    # Random extra wait, as a fraction of the backoff (0.25: up to 25% more).
    jitter: float = 0.25
    # Seconds a request may spend waiting between retries, in all.
    retry_budget: float = 30.0
    # "default": the SPEC's triggers; "any": every failed attempt moves on to the next candidate.
    fallback_on: Literal["default", "any"] = "default"
    # Seconds until a stream's first chunk, or a complete non-streamed answer.
    first_byte_timeout: float = 120.0
    # Longest silence between two chunks of a stream.
    idle_timeout: float = 60.0
    # The whole request: every attempt, every wait, and the stream to its end.
    total_timeout: float = 600.0
    # Per provider id: first_byte_timeout and idle_timeout.
    providers: dict[str, ProviderTimeouts] = {}


class ReliabilityMiddleware:
    def __init__(self, settings: ReliabilitySettings, gateway: Any) -> None:
        self.settings = settings
        self.catalog = gateway.catalog
        source = gateway.config.source
        for pid in settings.providers:
            if pid not in gateway.providers:
                raise ConfigError(f"{source}: `reliability.providers.{pid}`: no provider `{pid}` is configured")
        for key in ("first_byte_timeout", "idle_timeout", "total_timeout"):
            if getattr(settings, key) <= 0:
                raise ConfigError(f"{source}: `reliability.{key}`: must be greater than 0")
        for pid, t in settings.providers.items():
            for key in ("first_byte_timeout", "idle_timeout"):
                value = getattr(t, key)
                if value is not None and value <= 0:
                    raise ConfigError(f"{source}: `reliability.providers.{pid}.{key}`: must be greater than 0")
        for key in ("num_retries", "max_retries", "rate_limit_retries", "retry_after", "rate_limit_backoff",
                    "max_backoff", "jitter", "retry_budget"):
            if getattr(settings, key) < 0:
                raise ConfigError(f"{source}: `reliability.{key}`: must not be negative")

    async def __call__(self, call: Call, call_next: CallNext) -> Result:
        s = self.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.total_timeout
        retries, base, only_rate_limits = self._retry_policy(call)
        if call.params.timeout is not None and call.params.timeout <= 0:
            raise BadRequest("`timeout` must be greater than 0 seconds", param="timeout")
        candidates: list[Target | None] = list(call.candidates) or [self._resolve(call)]
        budget = s.retry_budget
        last: GatewayError | None = None
        for index, candidate in enumerate(candidates):
            has_next = index + 1 < len(candidates)
            done = 0
            while True:
                if loop.time() >= deadline:
                    raise self._final(last) if last is not None else UpstreamTimeout(
                        f"no answer within {s.total_timeout:g}s (total_timeout)")
                call.target = _copy(candidate)
                try:
                    return await self._attempt(call, call_next, deadline)
                except UpstreamError as exc:
                    last = exc
                    wait = None
                    if exc.retryable and done < retries and not (only_rate_limits and (exc.status != 429 or has_next)):
                        wait = self._backoff(base, done, exc.retry_after)
                    if wait is not None and wait <= budget and loop.time() + wait < deadline:
                        budget -= wait
                        done += 1
                        await asyncio.sleep(wait)
                        continue
                    if has_next and (s.fallback_on == "any" or exc.status >= 500 or exc.status in _FALLBACK_STATUSES):
                        break
                    raise self._final(exc) from None
                except GatewayError as exc:
                    # The gateway's own refusal (bad request for this provider...): moves on only with "any".
                    last = exc
                    if has_next and s.fallback_on == "any":
                        break
                    raise
        assert last is not None
        raise self._final(last)

    # -- policy -----------------------------------------------------------------------------------
    def _retry_policy(self, call: Call) -> tuple[int, float, bool]:
        """(retries allowed per candidate, first wait, whether only rate limits are retried)."""
        s = self.settings
        rp = call.params.retry_params
        if rp is None:
            return s.rate_limit_retries, s.rate_limit_backoff, True
        if rp.num_retries is not None and rp.num_retries < 0:
            raise BadRequest("`retry_params.num_retries` must not be negative", param="retry_params.num_retries")
        if rp.retry_after is not None and rp.retry_after < 0:
            raise BadRequest("`retry_params.retry_after` must not be negative", param="retry_params.retry_after")
        if not rp.retry_enabled:
            return 0, 0.0, False
        retries = s.num_retries if rp.num_retries is None else rp.num_retries
        return min(retries, s.max_retries), s.retry_after if rp.retry_after is None else rp.retry_after, False

    def _backoff(self, base: float, done: int, retry_after: float | None) -> float:
        s = self.settings
        wait = min(base * 2 ** done, s.max_backoff) * (1 + s.jitter * random.random())
        return max(wait, retry_after or 0.0)

    def _timeouts(self, call: Call) -> tuple[float, float]:
        """(first byte, idle): the request's `timeout` > per provider > the config default."""
        s = self.settings
        if call.params.timeout is not None:
            return call.params.timeout, call.params.timeout
        per = s.providers.get(call.target.provider) if call.target is not None else None
        if per is None:
            return s.first_byte_timeout, s.idle_timeout
        return (per.first_byte_timeout if per.first_byte_timeout is not None else s.first_byte_timeout,
                per.idle_timeout if per.idle_timeout is not None else s.idle_timeout)

    def _resolve(self, call: Call) -> Target | None:
        """Without routing: the core's target for `model` (None leaves it to the core, which says why)."""
        if call.target is not None:
            return call.target
        if not call.model:
            return None
        return self.catalog.resolve(call.model, call.params.route_provider_override)

    @staticmethod
    def _final(exc: GatewayError) -> GatewayError:
        """The error the client gets: the last one, with the provider's Retry-After passed on."""
        retry_after = getattr(exc, "retry_after", None)
        if exc.status == 429 and retry_after is not None:
            exc.headers.setdefault("retry-after", str(max(1, math.ceil(retry_after))))
        return exc

    # -- one attempt --------------------------------------------------------------------------------
    async def _attempt(self, call: Call, call_next: CallNext, deadline: float) -> Result:
        loop = asyncio.get_running_loop()
        first_byte, idle = self._timeouts(call)
        limit = min(first_byte, deadline - loop.time())
        seen = len(call.attempts)
        started = time.perf_counter()
        result: Result | None = None
        try:
            async with asyncio.timeout(limit):
                result = await call_next(call)
                if not isinstance(result, StreamResult):
                    return result
                first = await self._first_chunk(result.chunks, call)
        except TimeoutError:
            if isinstance(result, StreamResult):
                await _aclose(result.chunks)
            provider = call.target.provider if call.target is not None else "upstream"
            what = "no first chunk" if call.stream else "no answer"
            which = "total_timeout" if limit < first_byte else ("timeout" if call.params.timeout is not None else "first_byte_timeout")
            exc = UpstreamTimeout(f"provider `{provider}` sent {what} within {limit:.3g}s ({which})", provider=provider)
            _record(call, seen, exc, started)
            raise exc from None
        except GatewayError as exc:
            if isinstance(result, StreamResult):
                await _aclose(result.chunks)
            _record(call, seen, exc, started)
            raise
        except BaseException:
            if isinstance(result, StreamResult):
                await _aclose(result.chunks)
            raise
        attempt = call.attempts[-1] if len(call.attempts) > seen else None
        if attempt is not None:
            # A stream's attempt lasts until its first chunk, as a complete answer's lasts until the answer.
            attempt.duration = time.perf_counter() - started
        relay = self._relay(call, first, result.chunks, idle, deadline, attempt)
        return StreamResult(relay, status=result.status, headers=result.headers)

    async def _first_chunk(self, chunks: AsyncIterator[Chunk], call: Call) -> Chunk:
        provider = call.target.provider if call.target is not None else "upstream"
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            raise StreamInterrupted(f"provider `{provider}` ended the stream before sending anything", provider=provider) from None
        _check_chunk(first, provider)
        return first

    async def _relay(
        self, call: Call, first: Chunk, chunks: AsyncIterator[Chunk], idle: float, deadline: float, attempt: Attempt | None,
    ) -> AsyncIterator[Chunk]:
        """The stream as the client gets it: the first chunk, then the rest under the idle and total limits."""
        loop = asyncio.get_running_loop()
        provider = call.target.provider if call.target is not None else "upstream"
        watchdog = _Watchdog(loop)
        try:
            yield first
            while True:
                now = loop.time()
                until = min(now + idle, deadline)
                watchdog.arm(until)
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if not watchdog.fired():
                        raise
                    which = "total_timeout" if until >= deadline else "idle_timeout"
                    raise StreamInterrupted(
                        f"the stream from provider `{provider}` stalled: nothing for {until - now:.3g}s ({which})",
                        provider=provider, status=504, code="stream_timeout",
                    ) from None
                finally:
                    watchdog.disarm()
                _check_chunk(chunk, provider)
                yield chunk
        except GatewayError as exc:
            if attempt is not None:
                attempt.status, attempt.error = exc.status, exc.message
            raise
        finally:
            watchdog.close()
            await _aclose(chunks)


class _Watchdog:
    """Cancels the task that waits for the next chunk once its time is up.

    What ``asyncio.timeout`` does, without a timer per chunk (that costs ~10 us a chunk): one timer
    handle, moved only when it would fire too early or too late, and a cancellation only while the
    task waits on the upstream (never while it writes to the client).
    """

    __slots__ = ("loop", "task", "until", "handle", "_fired")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.task: asyncio.Task[Any] | None = None
        self.until: float | None = None
        self.handle: asyncio.TimerHandle | None = None
        self._fired = False

    def arm(self, until: float) -> None:
        self.task = asyncio.current_task()
        self.until = until
        if self.handle is None or self.handle.when() > until:
            if self.handle is not None:
                self.handle.cancel()
            self.handle = self.loop.call_at(until, self._check)

    def disarm(self) -> None:
        self.until = None

    def fired(self) -> bool:
        """True (once) if the watchdog cancelled the task; the cancellation is then withdrawn."""
        if not self._fired:
            return False
        self._fired = False
        if self.task is not None:
            self.task.uncancel()
        return True

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def _check(self) -> None:
        self.handle = None
        if self.until is None or self.task is None:
            return
        if self.loop.time() >= self.until:
            self._fired = True
            self.task.cancel()
        else:
            self.handle = self.loop.call_at(self.until, self._check)


def _check_chunk(chunk: Chunk, provider: str) -> None:
    try:
        _check_json(chunk.data)
    except msgspec.DecodeError:
        raise StreamInterrupted(
            f"provider `{provider}` sent a malformed stream chunk (not JSON)", provider=provider, code="malformed_chunk"
        ) from None


def _record(call: Call, seen: int, exc: GatewayError, started: float) -> None:
    """Put this stage's view of a failed attempt (a stream's first chunk included) on the one the core recorded."""
    if len(call.attempts) > seen:
        attempt = call.attempts[-1]
        attempt.status, attempt.error = exc.status, exc.message
        attempt.duration = time.perf_counter() - started


def _copy(target: Target | None) -> Target | None:
    # Later stages (deployments, credentials) fill in the copy; the candidate stays as routing made it.
    return None if target is None else msgspec.structs.replace(target, extra=dict(target.extra))


async def _aclose(chunks: Any) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            pass


@hookimpl
def register_middlewares(register: Any) -> None:
    register("reliability", ReliabilityMiddleware, order=800, settings=ReliabilitySettings)
