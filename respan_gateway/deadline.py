"""A deadline for repeated waits, with one timer handle instead of one per wait.

``asyncio.timeout`` (or aiohttp's read timeout) cancels a timer and starts a new one for every chunk
of a stream: some 10 us a chunk. A :class:`Deadline` is armed before each wait and disarmed after it;
its one handle moves only when it would fire too early (re-armed later) or too late (armed earlier),
and calls :meth:`Deadline.expire` (what a subclass does) once the time is up while armed. Used by the aiohttp transport's stream reads
and the reliability plugin's idle and first-token limits.
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


__all__ = ["Deadline"]
