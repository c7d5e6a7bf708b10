"""The two stores of entries, each an aiocache backend (``aiocache.base.BaseCache``).

- :class:`BoundedMemoryCache`: in the process, bounded by entries and by bytes, least recently used
  out first, each entry with its TTL (read against the plugin's clock). aiocache's own
  ``SimpleMemoryCache`` has no bound and expires entries with one timer per key, so it is replaced.
- :class:`SharedRedisCache`: aiocache's ``RedisBackend`` commands over the core's one Redis client
  (``gateway.state.redis``). aiocache's ``RedisCache`` builds a connection pool of its own in its
  constructor; this subclass skips that constructor and reads the shared client instead, so the
  process holds one pool, configured once in ``[state]``. It never closes that client (the core does)
  and never flushes the database: clearing is by key prefix (``SCAN`` + ``UNLINK``).

Both are used with ``timeout=0`` (aiocache's default wraps every operation in ``asyncio.wait_for``;
the Redis client has its own timeouts) and a bytes pass-through serializer. Beyond aiocache's
interface each has :meth:`purge`, the admin API's bulk delete.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiocache.backends.redis import RedisBackend
from aiocache.base import BaseCache
from aiocache.serializers import NullSerializer

from .entry import EntryMeta, HEAD, header_length, read_meta

if TYPE_CHECKING:
    from respan_gateway.state import SharedState

#: Whether an entry's header matches the purge's filters.
Match = Callable[[EntryMeta], bool]


def _bytes_serializer() -> NullSerializer:
    return NullSerializer(encoding=None)  # values are bytes in and bytes out


class BoundedMemoryCache(BaseCache):
    """An in-process aiocache backend bounded by ``max_entries`` and ``max_bytes`` (values are bytes)."""

    NAME = "bounded-memory"

    def __init__(self, *, max_entries: int, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        super().__init__(serializer=_bytes_serializer(), timeout=0)
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


class SharedRedisCache(RedisBackend):
    """aiocache's Redis backend over the process's one client (``gateway.state.redis``)."""

    NAME = "shared-redis"
    #: Bytes of each entry the purge reads to find its header (a longer header is read in a second step).
    PURGE_PREFIX_BYTES = 1024

    def __init__(self, state: SharedState) -> None:
        # Not RedisBackend.__init__: it builds a connection pool of its own. The shared client is read
        # on each use (it exists from the app's start on).
        BaseCache.__init__(self, serializer=_bytes_serializer(), timeout=0)
        self._state = state

    @property
    def client(self) -> Any:  # what RedisBackend's commands use
        return self._state.redis

    async def _close(self, *args: Any, _conn: Any = None, **kwargs: Any) -> None:
        pass  # the client is the core's: it closes it at shutdown

    async def _clear(self, namespace: str | None = None, _conn: Any = None) -> bool:
        if not namespace:
            raise ValueError("the shared Redis is cleared by key prefix only, never flushed")
        await self.purge(glob_escape(namespace) + "*", None)
        return True

    async def purge(self, pattern: str, match: Match | None) -> int:
        """Delete the keys matching the glob ``pattern`` whose entry header ``match`` accepts."""
        client = self.client
        deleted = 0
        batch: list[bytes] = []
        async for key in client.scan_iter(match=pattern, count=500):
            batch.append(key)
            if len(batch) >= 500:
                deleted += await self._purge_batch(batch, match)
                batch = []
        if batch:
            deleted += await self._purge_batch(batch, match)
        return deleted

    async def _purge_batch(self, keys: list[bytes], match: Match | None) -> int:
        client = self.client
        if match is not None:
            async with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.getrange(key, 0, self.PURGE_PREFIX_BYTES - 1)
                prefixes = await pipe.execute()
            chosen = []
            for key, prefix in zip(keys, prefixes):
                meta = read_meta(prefix or b"")
                if meta is None and prefix:
                    length = header_length(prefix)
                    if length is not None:  # a header longer than the first read
                        meta = read_meta(await client.getrange(key, 0, HEAD + length - 1) or b"")
                if meta is not None and match(meta):
                    chosen.append(key)
            keys = chosen
        return int(await client.unlink(*keys)) if keys else 0


def glob_escape(text: str) -> str:
    """``text`` matched literally in a Redis glob pattern (SCAN MATCH)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


__all__ = ["BoundedMemoryCache", "SharedRedisCache", "glob_escape"]
