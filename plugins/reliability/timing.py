"""The clock of one attempt: the first-byte or first-token limit, then the stream under the idle and total limits.

:func:`timed_attempt` runs one attempt and, for a stream, fetches its head inside the same limit.
When a failure before the first token could still be rescued (``hold``: another candidate, or
retries left that a broken or silent head would use), the head is every chunk up to and including
the first token (content, a tool call, reasoning or a finish, as the endpoint's ``first_token``
tells), so that a late first token can fail over with nothing sent to the client. Otherwise
holding would only delay the client: the head is the first chunk, and the rest of the first-token
limit runs in the relay. After the head, :func:`relay` hands the chunks to the client one by one,
each checked to be JSON (unless a reader before decoded it whole: ``Chunk.parsed``), under a
:class:`_Watchdog`; a failure there ends the client's stream with an error event (the endpoint
writes it), unless the middleware continues the stream on another candidate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

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
from respan_gateway.deadline import Deadline, Timeouts

from .settings import ReliabilitySettings

__all__ = ["Limits", "attempt_limits", "timed_attempt", "relay"]

# Validates a chunk's JSON without building any object.
_check_json = msgspec.json.Decoder(msgspec.Raw).decode

FirstToken = Callable[[Chunk], bool]


class Limits:
    """The limits of one attempt: until its head (and the setting that gave it), then between chunks."""

    __slots__ = ("head", "head_name", "idle")

    def __init__(self, head: float, head_name: str, idle: float) -> None:
        self.head, self.head_name, self.idle = head, head_name, idle


def attempt_limits(settings: ReliabilitySettings, call: Call) -> Limits:
    """The limits of the attempt on ``call.target``.

    A complete answer: the request's ``timeout`` > the model's ``first_byte_timeout`` > the
    provider's > the section's. A stream's first token: the request's ``first_token_timeout`` > its
    ``timeout`` > ``first_token_timeout`` of the model, the provider, the section > the first-byte
    limit above. Idle: the request's ``timeout`` > model > provider > section.
    """
    s, p, target = settings, call.params, call.target
    layers = [s.models.get(target.model), s.providers.get(target.provider)] if target is not None else []

    def pick(name: str) -> tuple[float, str] | None:
        for layer in layers:
            value = getattr(layer, name, None) if layer is not None else None
            if value is not None:
                return value, name
        value = getattr(s, name)
        return (value, name) if value is not None else None

    if p.timeout is not None:
        first_byte, idle = (p.timeout, "timeout"), p.timeout
    else:
        first_byte, idle = pick("first_byte_timeout"), pick("idle_timeout")[0]  # type: ignore[assignment,index]
    head = first_byte
    if call.stream:
        if p.first_token_timeout is not None:
            head = (p.first_token_timeout, "first_token_timeout")
        elif p.timeout is None:
            head = pick("first_token_timeout") or first_byte
    assert head is not None
    return Limits(head[0], head[1], idle)


async def timed_attempt(settings: ReliabilitySettings, call: Call, call_next: CallNext, deadline: float,
                        timeouts: Timeouts, first_token: FirstToken | None = None, hold: bool = True) -> Result:
    """One attempt on ``call.target``: an answer (or a stream's head) within its limit.

    ``hold``: a failure before the stream's first token can be rescued, so the head is held until
    it; else only the first chunk is awaited here (a stream that fails at once is still an HTTP
    error) and the relay keeps the first-token limit. A failure is put on the attempt the core
    recorded, and raised; a stream comes back as the relay of :func:`relay`. ``timeouts``: the
    running loop's shared timer of attempts.
    """
    loop = asyncio.get_running_loop()
    limits = attempt_limits(settings, call)
    begun = loop.time()
    limit = min(limits.head, deadline - begun)
    seen = len(call.attempts)
    started = time.perf_counter()
    result: Result | None = None
    try:
        async with timeouts.within(limit):
            result = await call_next(call)
            if not isinstance(result, StreamResult):
                return result
            head = await _head(result.chunks, call, first_token if hold else None)
    except TimeoutError:
        provider = call.target.provider if call.target is not None else "upstream"
        what = ("no first token" if first_token is not None else "no first chunk") if call.stream else "no answer"
        which = "total_timeout" if limit < limits.head else limits.head_name
        exc = UpstreamTimeout(f"provider `{provider}` sent {what} within {limit:.3g}s ({which})", provider=provider)
        _record(call, seen, exc, started)
        if isinstance(result, StreamResult):
            await aclose(result.chunks, quiet=True)
        raise exc from None
    except GatewayError as exc:
        _record(call, seen, exc, started)
        if isinstance(result, StreamResult):
            await aclose(result.chunks, quiet=True)
        raise
    except BaseException:
        if isinstance(result, StreamResult):
            await aclose(result.chunks, quiet=True)
        raise
    attempt = call.attempts[-1] if len(call.attempts) > seen else None
    # The first token still to come: the relay waits for it under the rest of the head's limit.
    pending = None
    if first_token is not None and not hold and not any(first_token(chunk) for chunk in head):
        pending = _FirstToken(first_token, begun + limit, limit, "total_timeout" if limit < limits.head else limits.head_name, started)
    if attempt is not None and pending is None:
        # A stream's attempt lasts until its first token, as a complete answer's lasts until the answer.
        attempt.duration = time.perf_counter() - started
    chunks = relay(call, head, result.chunks, limits.idle, deadline, attempt, pending)
    return StreamResult(chunks, status=result.status, headers=result.headers)


class _FirstToken:
    """A first token the relay still waits for: by ``until`` (loop time), the head's limit."""

    __slots__ = ("test", "until", "limit", "name", "started")

    def __init__(self, test: FirstToken, until: float, limit: float, name: str, started: float) -> None:
        self.test, self.until, self.limit, self.name, self.started = test, until, limit, name, started


async def _head(chunks: AsyncIterator[Chunk], call: Call, first_token: FirstToken | None) -> list[Chunk]:
    """The stream's chunks up to its first token (the first chunk, without ``first_token``)."""
    provider = call.target.provider if call.target is not None else "upstream"
    head: list[Chunk] = []
    while True:
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            if not head:
                raise StreamInterrupted(f"provider `{provider}` ended the stream before sending anything", provider=provider) from None
            return head  # an answer without a token: the relay ends it as the provider did
        if chunk.parsed is None:
            _check_chunk(chunk, provider)
        head.append(chunk)
        if first_token is None or first_token(chunk):
            return head


async def relay(
    call: Call, head: list[Chunk], chunks: AsyncIterator[Chunk], idle: float, deadline: float, attempt: Attempt | None,
    pending: _FirstToken | None = None,
) -> AsyncIterator[Chunk]:
    """The stream as the client gets it: its head, then the rest under the idle and total limits
    (until ``pending``'s first token, under the rest of the first-token limit instead)."""
    loop = asyncio.get_running_loop()
    provider = call.target.provider if call.target is not None else "upstream"
    watchdog = _Watchdog(loop)
    try:
        for chunk in head:
            yield chunk
        next_chunk = chunks.__anext__
        while True:
            now = loop.time()
            until = now + idle if pending is None else pending.until
            if until > deadline:
                until = deadline
            watchdog.arm(until)
            try:
                chunk = await next_chunk()
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if not watchdog.fired():
                    raise
                if pending is not None:
                    which = "total_timeout" if until >= deadline else pending.name
                    raise UpstreamTimeout(
                        f"provider `{provider}` sent no first token within {pending.limit:.3g}s ({which})", provider=provider,
                    ) from None
                which = "total_timeout" if until >= deadline else "idle_timeout"
                raise StreamInterrupted(
                    f"the stream from provider `{provider}` stalled: nothing for {until - now:.3g}s ({which})",
                    provider=provider, status=504, code="stream_timeout",
                ) from None
            finally:
                watchdog.until = None
            if chunk.parsed is None:
                _check_chunk(chunk, provider)
            if pending is not None and pending.test(chunk):
                if attempt is not None:
                    attempt.duration = time.perf_counter() - pending.started
                pending = None
            yield chunk
    except GatewayError as exc:
        if attempt is not None:
            attempt.status, attempt.error = exc.status, exc.message
            if pending is not None:  # failed before its first token: the attempt lasted until now
                attempt.duration = time.perf_counter() - pending.started
        raise
    finally:
        watchdog.close()
        await aclose(chunks, quiet=True)


class _Watchdog(Deadline):
    """Cancels the task that waits for the next chunk once its time is up: what ``asyncio.timeout``
    does, without a timer per chunk (:class:`respan_gateway.deadline.Deadline`), and a cancellation
    only while the task waits on the upstream (never while it writes to the client)."""

    __slots__ = ("task", "_fired")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.task: asyncio.Task[object] | None = None
        self._fired = False

    def arm(self, until: float) -> None:
        self.task = asyncio.current_task(self.loop)
        Deadline.arm(self, until)

    def fired(self) -> bool:
        """True (once) if the watchdog cancelled the task; the cancellation is then withdrawn."""
        if not self._fired:
            return False
        self._fired = False
        if self.task is not None:
            self.task.uncancel()
        return True

    def expire(self) -> None:
        if self.task is not None:
            self._fired = True
            self.task.cancel()


def _check_chunk(chunk: Chunk, provider: str) -> None:
    """The malformed_chunk error of a chunk that is not JSON (callers skip one a reader decoded
    whole, ``chunk.parsed`` set: it is JSON)."""
    try:
        _check_json(chunk.data)
    except msgspec.DecodeError:
        raise _malformed(provider) from None


def _malformed(provider: str) -> StreamInterrupted:
    return StreamInterrupted(
        f"provider `{provider}` sent a malformed stream chunk (not JSON)", provider=provider, code="malformed_chunk")


def _record(call: Call, seen: int, exc: GatewayError, started: float) -> None:
    """Put this stage's view of a failed attempt (a stream's first chunk included) on the one the core recorded."""
    if len(call.attempts) > seen:
        attempt = call.attempts[-1]
        attempt.status, attempt.error = exc.status, exc.message
        attempt.duration = time.perf_counter() - started


