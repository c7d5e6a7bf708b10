"""A deadline for repeated waits, with one timer handle instead of one per wait.

``asyncio.timeout`` (or aiohttp's read timeout) cancels a timer and starts a new one for every chunk
of a stream: some 10 us a chunk. A :class:`Deadline` is armed before each wait and disarmed after it;
its one handle moves only when it would fire too early (re-armed later) or too late (armed earlier),
and calls :meth:`Deadline.expire` (what a subclass does) once the time is up while armed. Used by the aiohttp transport's stream reads
and the reliability plugin's idle and first-token limits.

:class:`Timeouts` is ``asyncio.timeout`` for many concurrent waits (one per request) on one timer
handle between them, for the same reason: ``asyncio.timeout`` schedules and cancels a timer per use
(~3-7 us). Used by the reliability plugin's limit on each attempt.
"""

from __future__ import annotations

import asyncio


class Deadline:
    """``arm(until)`` before a wait (loop time), ``until = None`` after it, ``close()`` at the end."""

    __slots__ = ("loop", "until", "handle", "at")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.until: float | None = None  # None: disarmed (nothing is waiting)
        self.handle: asyncio.TimerHandle | None = None
        self.at = 0.0  # when `handle` fires

    def arm(self, until: float) -> None:
        self.until = until
        if self.handle is None or self.at > until:
            if self.handle is not None:
                self.handle.cancel()
            self.handle = self.loop.call_at(until, self._check)
            self.at = until

    def expire(self) -> None:
        """The time is up while armed (called from the loop's timer)."""
        raise NotImplementedError

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def _check(self) -> None:
        self.handle = None
        if self.until is None:
            return  # armed again by the next wait
        if self.loop.time() >= self.until:
            self.expire()
        else:
            self.handle = self.loop.call_at(self.until, self._check)
            self.at = self.until


class Timeouts(Deadline):
    """``async with timeouts.within(seconds):`` raises ``TimeoutError`` when the block outlasts
    ``seconds``, as ``asyncio.timeout`` does (the task is cancelled, the cancellation turned into
    ``TimeoutError`` on the way out; a cancellation from elsewhere passes through), for the waits of
    one event loop on the one handle of a :class:`Deadline`: armed for the nearest wait (moved only to
    fire earlier), it expires the waits that are due when it fires and is armed for the nearest of the
    others. Waits of similar lengths (every request's) keep one handle, firing about once per limit."""

    __slots__ = ("waits",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.waits: dict[_Within, None] = {}  # the blocks inside their limit, in arrival order

    def within(self, seconds: float) -> _Within:
        return _Within(self, self.loop.time() + seconds)

    def _add(self, wait: _Within) -> None:
        self.waits[wait] = None
        if self.until is None or wait.until < self.until:
            self.arm(wait.until)

    def expire(self) -> None:
        now = self.loop.time()
        nearest: float | None = None
        for wait in list(self.waits):
            if wait.until <= now:
                del self.waits[wait]
                wait.expire()
            elif nearest is None or wait.until < nearest:
                nearest = wait.until
        self.until = None
        if nearest is not None:
            self.arm(nearest)


class _Within:
    """One block under :class:`Timeouts` (``asyncio.Timeout``'s states: expired, then uncancelled on exit)."""

    __slots__ = ("owner", "until", "task", "cancelling", "expired")

    def __init__(self, owner: Timeouts, until: float) -> None:
        self.owner, self.until = owner, until
        self.task: asyncio.Task[object] | None = None
        self.cancelling = 0
        self.expired = False

    async def __aenter__(self) -> _Within:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Timeouts.within() must be used inside a task")
        self.task, self.cancelling = task, task.cancelling()
        if self.until <= self.owner.loop.time():
            self.owner.loop.call_soon(self.expire)  # already due: expire at the first wait, as asyncio does
        else:
            self.owner._add(self)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.owner.waits.pop(self, None)
        if self.expired:
            assert self.task is not None
            if self.task.uncancel() <= self.cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc
        else:
            self.until = float("inf")  # a pending `expire` (already due at entry) finds the block gone

    def expire(self) -> None:
        if self.until == float("inf") or self.task is None or self.task.done():
            return
        self.expired = True
        self.task.cancel()


__all__ = ["Deadline", "Timeouts"]
