"""The two stores of entries, each an aiocache backend (``aiocache.base.BaseCache``).

- :class:`BoundedMemoryCache`: in the process, bounded by entries and by bytes, least recently used
  out first, each entry with its TTL (read against the plugin's clock). aiocache's own
  ``SimpleMemoryCache`` has no bound and expires entries with one timer per key, so it is replaced.
- :class:`~.shared.SharedRedisCache` (its own module: it imports redis): aiocache's ``RedisBackend`` commands over the core's one Redis client
  (``gateway.state.redis``). aiocache's ``RedisCache`` builds a connection pool of its own in its
  constructor; this subclass skips that constructor and reads the shared client instead, so the
  process holds one pool, configured once in ``[state]``. It never closes that client (the core does)
  and never flushes the database: clearing is by key prefix (``SCAN`` + ``UNLINK``).

Both are used with ``timeout=0`` (aiocache's default wraps every operation in ``asyncio.wait_for``;
the Redis client has its own timeouts) and a bytes pass-through serializer. Beyond aiocache's
interface each has :meth:`purge`, the admin API's bulk delete.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


def _import_aiocache() -> None:
    """aiocache's package imports redis when it is installed, for a RedisCache this plugin never uses
    (:class:`~.shared.SharedRedisCache` is its own): hidden while aiocache loads, unless the process
    has it already. redis costs a worker that has no Redis some 8 MB and 0.7 s."""
    if "aiocache" in sys.modules or "redis" in sys.modules:
        return
    sys.modules["redis"] = None  # type: ignore[assignment]  # `import redis` fails: aiocache skips its RedisCache
    try:
        import aiocache  # noqa: F401
    finally:
        del sys.modules["redis"]


_import_aiocache()

from aiocache.base import BaseCache  # noqa: E402
from aiocache.serializers import NullSerializer  # noqa: E402

from .entry import EntryMeta, read_meta  # noqa: E402

#: Whether an entry's header matches the purge's filters.
Match = Callable[[EntryMeta], bool]


def bytes_serializer() -> NullSerializer:
    return NullSerializer(encoding=None)  # values are bytes in and bytes out


async def read(store: BaseCache, key: str) -> bytes | None:
    """``store.get(key)`` on the request path, without aiocache's per-call wrappers (the
    ``AIOCACHE_DISABLE`` environment check, plugin hooks, timeout, namespace and serializer): these
    stores configure none of them (no plugins, ``timeout=0``, no namespace, bytes in and out), and the
    wrappers cost ~5 us a call against ~0.6 us for the lookup itself."""
    return await store._get(key, encoding=None)


async def write(store: BaseCache, key: str, value: bytes, ttl: float) -> None:
    """``store.set(key, value, ttl=ttl)`` without the wrappers (see :func:`read`)."""
    await store._set(key, value, ttl=ttl)


class BoundedMemoryCache(BaseCache):
    """An in-process aiocache backend bounded by ``max_entries`` and ``max_bytes`` (values are bytes)."""

    NAME = "bounded-memory"

    def __init__(self, *, max_entries: int, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        super().__init__(serializer=bytes_serializer(), timeout=0)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self.bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _live(self, key: str) -> bytes | None:
        item = self._entries.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and self.clock() >= expires:
            self._remove(key)
            return None
        return value

    def _remove(self, key: str) -> int:
        item = self._entries.pop(key, None)
        if item is None:
            return 0
        self.bytes -= len(item[0])
        return 1

    async def _get(self, key: str, encoding: Any = None, _conn: Any = None) -> bytes | None:
        value = self._live(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    async def _gets(self, key: str, encoding: Any = None, _conn: Any = None) -> bytes | None:
        return await self._get(key)

    async def _multi_get(self, keys: list[str], encoding: Any = None, _conn: Any = None) -> list[bytes | None]:
        return [await self._get(key) for key in keys]

    async def _set(self, key: str, value: bytes, ttl: float | None = None, _cas_token: Any = None, _conn: Any = None) -> bool:
        if _cas_token is not None and _cas_token != self._live(key):
            return False
        self._remove(key)
        if len(value) > self.max_bytes or self.max_entries <= 0:
            return False
        self._entries[key] = (value, self.clock() + ttl if ttl else None)
        self.bytes += len(value)
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._remove(oldest)
            self.evictions += 1
        return True

    async def _multi_set(self, pairs: list[tuple[str, bytes]], ttl: float | None = None, _conn: Any = None) -> bool:
        for key, value in pairs:
            await self._set(key, value, ttl)
        return True

    async def _add(self, key: str, value: bytes, ttl: float | None = None, _conn: Any = None) -> bool:
        if self._live(key) is not None:
            raise ValueError(f"Key {key} already exists, use .set to update the value")
        return await self._set(key, value, ttl)

    async def _exists(self, key: str, _conn: Any = None) -> bool:
        return self._live(key) is not None

    async def _increment(self, key: str, delta: int, _conn: Any = None) -> int:
        raise TypeError("the response cache stores bytes, not counters")

    async def _expire(self, key: str, ttl: float, _conn: Any = None) -> bool:
        value = self._live(key)
        if value is None:
            return False
        self._entries[key] = (value, self.clock() + ttl if ttl else None)
        return True

    async def _delete(self, key: str, _conn: Any = None) -> int:
        return self._remove(key)

    async def _clear(self, namespace: str | None = None, _conn: Any = None) -> bool:
        for key in [k for k in self._entries if namespace is None or k.startswith(namespace)]:
            self._remove(key)
        return True

    async def _raw(self, command: str, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("the in-process cache has no raw commands")

    async def _redlock_release(self, key: str, value: Any) -> int:
        return self._remove(key) if self._live(key) == value else 0

    async def _close(self, *args: Any, **kwargs: Any) -> None:
        self._entries.clear()
        self.bytes = 0

    def count(self, prefix: str) -> int:
        """The live entries under ``prefix``."""
        now = self.clock()
        return sum(1 for key, (_, expires) in self._entries.items()
                   if key.startswith(prefix) and (expires is None or now < expires))

    async def purge(self, prefix: str, match: Match | None) -> int:
        """Delete the entries under ``prefix`` whose header ``match`` accepts (all of them when None)."""
        doomed = []
        for key, (value, _) in self._entries.items():
            if not key.startswith(prefix):
                continue
            if match is not None:
                meta = read_meta(value)
                if meta is None or not match(meta):
                    continue
            doomed.append(key)
        for key in doomed:
            self._remove(key)
        return len(doomed)


def glob_escape(text: str) -> str:
    """``text`` matched literally in a Redis glob pattern (SCAN MATCH)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


__all__ = ["BoundedMemoryCache", "Match", "bytes_serializer", "glob_escape"]
