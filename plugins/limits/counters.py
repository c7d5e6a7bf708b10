"""The counters behind every limit: one interface, two stores.

A limit is a counter (USD, requests or tokens) in a time window. Before a call the middleware
*reserves* an estimate on every counter that applies to it, in one atomic step: all are checked
against their limits and either all are increased or none is (:meth:`CounterStore.reserve`). After
the call the observer *settles*: each counter is adjusted by the difference between what was
reserved and what the call really cost (:meth:`CounterStore.settle`); a failed call releases its
spend and tokens that way (its real cost is 0).

- :class:`RedisCounters`: the counters of every process pointed at one Redis (``gateway.state``),
  each step one Lua script (one round trip), so replicas never overshoot by more than what is in
  flight. Keys expire a little after their window ends.
- :class:`MemoryCounters`: the same in the process (the embedded default, no Redis): exact for one
  process, as the event loop runs each step without a pause.

Windows are fixed and aligned in UTC (:func:`window`); time comes from an injectable :class:`Clock`.
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
import time
from typing import Any, Literal, Protocol

import msgspec

#: Kinds of window: fixed and aligned in UTC (a week starts on Monday), or ``lifetime`` (never resets).
WindowKind = Literal["minute", "hour", "day", "week", "month", "year", "lifetime"]
_SECONDS = {"minute": 60, "hour": 3600, "day": 86400, "week": 7 * 86400}
_MONTHS = {"month": 1, "year": 12}
#: A counter lives this long after its window ends, so that a call still running at the end settles in it.
GRACE_SECONDS = 300


class Clock:
    """Wall-clock time (epoch seconds) for windows; ``offset`` moves it (tests move to the next period)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset


class Window(msgspec.Struct, frozen=True):
    """One window of a counter: its id (part of the counter's key), start and end (None: never ends)."""

    id: str
    start: float
    end: float | None


def _utc(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc)


def _add_months(start: dt.datetime, months: int) -> dt.datetime:
    month0 = start.month - 1 + months
    year, month = start.year + month0 // 12, month0 % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return start.replace(year=year, month=month, day=day)


def window(kind: WindowKind, now: float, anchor: float | None = None, length: float | None = None) -> Window:
    """The window of ``kind`` that holds ``now``.

    Without ``anchor`` windows are aligned in UTC (minute, hour, day at midnight, week on Monday,
    month on the 1st, year on 1 January). With ``anchor`` (epoch seconds) they recur from it:
    ``anchor + k * length`` for fixed lengths (``length`` seconds overrides the kind's), the same
    day of the month for months and years."""
    if kind == "lifetime":
        return Window("all", 0.0, None)
    if length is None and kind in _SECONDS:
        length = float(_SECONDS[kind])
    if length is not None:
        if anchor is None:
            # UTC alignment: a week from Monday 1970-01-05.
            anchor = 4 * 86400.0 if kind == "week" else 0.0
        k = math.floor((now - anchor) / length)
        start = anchor + k * length
        return Window(f"{int(start)}", start, start + length)
    months = _MONTHS[kind]
    base = _utc(anchor) if anchor is not None else dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    current = _utc(now)
    k = ((current.year - base.year) * 12 + current.month - base.month) // months
    start = _add_months(base, k * months)
    if start > current:
        k -= 1
        start = _add_months(base, k * months)
    end = _add_months(base, (k + 1) * months)
    return Window(f"{int(start.timestamp())}", start.timestamp(), end.timestamp())


class Counter(msgspec.Struct, kw_only=True):
    """One counter of a reservation: its key, the amount to add, its limit (None: only counted), the
    seconds it lives from now (None: forever) and, when it does not exist yet, the value it starts
    from (``seed``: a lifetime total read from the database, so a restart or a flushed Redis loses nothing)."""

    key: str
    amount: float
    limit: float | None = None
    ttl: int | None = None
    seed: float | None = None


def ttl_of(w: Window, now: float) -> int | None:
    return None if w.end is None else max(1, math.ceil(w.end - now) + GRACE_SECONDS)


class CounterStore(Protocol):
    async def reserve(self, counters: list[Counter]) -> tuple[bool, list[float]]:
        """Check every counter (``current + amount`` within its limit, and ``current`` below it) and, if
        all pass, add every amount; atomic. Returns (allowed, the values before the step)."""

    async def settle(self, adjustments: list[tuple[str, float]]) -> None:
        """Add each delta to its counter, when the counter still exists (an expired window is left alone)."""

    async def values(self, keys: list[str]) -> list[float]:
        """The current values (0 for a counter that does not exist)."""

    async def delete(self, keys: list[str]) -> None:
        """Remove counters (a deleted customer starts again from zero)."""


def _blocks(current: float, amount: float, limit: float | None) -> bool:
    return limit is not None and (current >= limit or current + amount > limit)


class MemoryCounters:
    """The counters of one process (no Redis): each step runs without an ``await``, so it is atomic."""

    #: Seconds between sweeps of the expired counters (one walk of the dict; windows keep it bounded).
    PURGE_EVERY = 60.0

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._values: dict[str, list[float]] = {}  # key -> [value, expires at (inf: never)]
        self._next_purge = 0.0

    def _get(self, key: str, now: float) -> list[float] | None:
        entry = self._values.get(key)
        if entry is not None and entry[1] <= now:
            del self._values[key]
            return None
        return entry

    async def reserve(self, counters: list[Counter]) -> tuple[bool, list[float]]:
        now = self.clock.now()
        current = []
        for c in counters:
            entry = self._get(c.key, now)
            current.append(entry[0] if entry is not None else (c.seed or 0.0))
        allowed = not any(_blocks(v, c.amount, c.limit) for v, c in zip(current, counters))
        if allowed:
            if now >= self._next_purge:
                self._purge(now)
            for value, c in zip(current, counters):
                entry = self._values.get(c.key)
                if entry is None:
                    self._values[c.key] = [value + c.amount, now + c.ttl if c.ttl is not None else math.inf]
                else:
                    entry[0] += c.amount
        return allowed, current

    async def settle(self, adjustments: list[tuple[str, float]]) -> None:
        self.adjust(adjustments)

    def adjust(self, adjustments: list[tuple[str, float]]) -> None:
        """:meth:`settle` without a pause: the observer settles in the process before the next call."""
        now = self.clock.now()
        for key, delta in adjustments:
            entry = self._get(key, now)
            if entry is not None:
                entry[0] += delta

    async def values(self, keys: list[str]) -> list[float]:
        now = self.clock.now()
        return [entry[0] if (entry := self._get(k, now)) is not None else 0.0 for k in keys]

    async def delete(self, keys: list[str]) -> None:
        for key in keys:
            self._values.pop(key, None)

    def _purge(self, now: float) -> None:
        self._next_purge = now + self.PURGE_EVERY
        for key in [k for k, (_, expires) in self._values.items() if expires <= now]:
            del self._values[key]


# KEYS: the counters. ARGV: per counter 4 values: amount, limit ("" = none), ttl ("" = forever),
# seed ("" = none). Returns {allowed (1/0), value before of each counter...} (values as strings:
# Lua numbers would come back as integers).
_RESERVE = """
local n = #KEYS
local current = {}
local existed = {}
local allowed = 1
for i = 1, n do
  local base = (i - 1) * 4
  local amount = tonumber(ARGV[base + 1])
  local v = redis.call('GET', KEYS[i])
  local cur
  if v then
    cur = tonumber(v)
    existed[i] = true
  else
    cur = tonumber(ARGV[base + 4]) or 0
    existed[i] = false
  end
  current[i] = cur
  if ARGV[base + 2] ~= '' then
    local limit = tonumber(ARGV[base + 2])
    if cur >= limit or cur + amount > limit then allowed = 0 end
  end
end
if allowed == 1 then
  for i = 1, n do
    local base = (i - 1) * 4
    if not existed[i] and ARGV[base + 4] ~= '' then
      redis.call('SET', KEYS[i], ARGV[base + 4])
    end
    redis.call('INCRBYFLOAT', KEYS[i], ARGV[base + 1])
    if not existed[i] and ARGV[base + 3] ~= '' then
      redis.call('EXPIRE', KEYS[i], ARGV[base + 3])
    end
  end
end
local out = {allowed}
for i = 1, n do out[i + 1] = tostring(current[i]) end
return out
"""

# KEYS: counters; ARGV: the delta of each. A counter that expired is not brought back.
_SETTLE = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('INCRBYFLOAT', KEYS[i], ARGV[i])
  end
end
return 1
"""


class RedisCounters:
    """The counters in the shared Redis (``gateway.state.redis``); each step is one Lua script."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self._reserve: Any = None
        self._settle: Any = None

    def _scripts(self) -> tuple[Any, Any]:
        if self._reserve is None:
            redis = self.state.redis
            # register_script: EVALSHA, and EVAL again when Redis lost its script cache (a restart).
            self._reserve, self._settle = redis.register_script(_RESERVE), redis.register_script(_SETTLE)
        return self._reserve, self._settle

    async def reserve(self, counters: list[Counter]) -> tuple[bool, list[float]]:
        reserve, _ = self._scripts()
        args: list[Any] = []
        for c in counters:
            args += [repr(float(c.amount)), "" if c.limit is None else repr(float(c.limit)),
                     "" if c.ttl is None else str(c.ttl), "" if c.seed is None else repr(float(c.seed))]
        out = await reserve(keys=[c.key for c in counters], args=args)
        return int(out[0]) == 1, [float(v) for v in out[1:]]

    async def settle(self, adjustments: list[tuple[str, float]]) -> None:
        _, settle = self._scripts()
        await settle(keys=[k for k, _ in adjustments], args=[repr(float(d)) for _, d in adjustments])

    async def values(self, keys: list[str]) -> list[float]:
        if not keys:
            return []
        raw = await self.state.redis.mget(keys)
        return [float(v) if v is not None else 0.0 for v in raw]

    async def delete(self, keys: list[str]) -> None:
        if keys:
            await self.state.redis.delete(*keys)


__all__ = ["Clock", "Counter", "CounterStore", "MemoryCounters", "RedisCounters", "Window", "window"]
