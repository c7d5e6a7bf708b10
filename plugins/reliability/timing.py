"""The clock of one attempt: the first-byte limit, then the stream under the idle and total limits.

:func:`timed_attempt` runs one attempt and, for a stream, fetches its first chunk inside the same
limit, so that a stream failing before it can still be retried or fall back. After it, :func:`relay`
hands the chunks to the client one by one, each checked to be JSON, under a :class:`_Watchdog`;
a failure there ends the client's stream with an error event (the endpoint writes it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import msgspec

from respan_gateway import (
    Attempt,
    Call,
    CallNext,
    Chunk,
    GatewayError,
    Result,
    StreamInterrupted,
    StreamResult,
    UpstreamTimeout,
    aclose,
)

from .settings import ReliabilitySettings

__all__ = ["attempt_timeouts", "timed_attempt", "relay"]

# Validates a chunk's JSON without building any object.
_check_json = msgspec.json.Decoder(msgspec.Raw).decode


def attempt_timeouts(settings: ReliabilitySettings, call: Call) -> tuple[float, float]:
    """(first byte, idle) of the attempt on ``call.target``: the request's `timeout` > per provider > the default."""
    s = settings
    if call.params.timeout is not None:
        return call.params.timeout, call.params.timeout
    per = s.providers.get(call.target.provider) if call.target is not None else None
    if per is None:
        return s.first_byte_timeout, s.idle_timeout
    return (per.first_byte_timeout if per.first_byte_timeout is not None else s.first_byte_timeout,
            per.idle_timeout if per.idle_timeout is not None else s.idle_timeout)


async def timed_attempt(settings: ReliabilitySettings, call: Call, call_next: CallNext, deadline: float) -> Result:
    """One attempt on ``call.target``: an answer (or a stream's first chunk) within the first-byte limit.

    A failure is put on the attempt the core recorded, and raised; a stream comes back as the relay
    of :func:`relay`.
    """
    loop = asyncio.get_running_loop()
    first_byte, idle = attempt_timeouts(settings, call)
    limit = min(first_byte, deadline - loop.time())
    seen = len(call.attempts)
    started = time.perf_counter()
    result: Result | None = None
    try:
        async with asyncio.timeout(limit):
            result = await call_next(call)
            if not isinstance(result, StreamResult):
                return result
            first = await _first_chunk(result.chunks, call)
    except TimeoutError:
        if isinstance(result, StreamResult):
            await aclose(result.chunks, quiet=True)
        provider = call.target.provider if call.target is not None else "upstream"
        what = "no first chunk" if call.stream else "no answer"
        which = "total_timeout" if limit < first_byte else ("timeout" if call.params.timeout is not None else "first_byte_timeout")
        exc = UpstreamTimeout(f"provider `{provider}` sent {what} within {limit:.3g}s ({which})", provider=provider)
        _record(call, seen, exc, started)
        raise exc from None
    except GatewayError as exc:
        if isinstance(result, StreamResult):
            await aclose(result.chunks, quiet=True)
        _record(call, seen, exc, started)
        raise
    except BaseException:
        if isinstance(result, StreamResult):
            await aclose(result.chunks, quiet=True)
        raise
    attempt = call.attempts[-1] if len(call.attempts) > seen else None
    if attempt is not None:
        # A stream's attempt lasts until its first chunk, as a complete answer's lasts until the answer.
        attempt.duration = time.perf_counter() - started
    chunks = relay(call, first, result.chunks, idle, deadline, attempt)
    return StreamResult(chunks, status=result.status, headers=result.headers)


async def _first_chunk(chunks: AsyncIterator[Chunk], call: Call) -> Chunk:
    provider = call.target.provider if call.target is not None else "upstream"
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        raise StreamInterrupted(f"provider `{provider}` ended the stream before sending anything", provider=provider) from None
    _check_chunk(first, provider)
    return first


async def relay(
    call: Call, first: Chunk, chunks: AsyncIterator[Chunk], idle: float, deadline: float, attempt: Attempt | None,
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
        await aclose(chunks, quiet=True)


class _Watchdog:
    """Cancels the task that waits for the next chunk once its time is up.

    What ``asyncio.timeout`` does, without a timer per chunk (that costs ~10 us a chunk): one timer
    handle, moved only when it would fire too early or too late, and a cancellation only while the
    task waits on the upstream (never while it writes to the client).
    """

    __slots__ = ("loop", "task", "until", "handle", "_fired")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.task: asyncio.Task[object] | None = None
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


