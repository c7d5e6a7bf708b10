"""The Redis store of entries: aiocache's ``RedisBackend`` over the core's one client (see :mod:`.backends`).

Its own module because it imports redis: a process without ``[state] redis_url`` never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiocache.backends.redis import RedisBackend
from aiocache.base import BaseCache

from .backends import Match, bytes_serializer, glob_escape
from .entry import HEAD, header_length, read_meta

if TYPE_CHECKING:
    from respan_gateway.state import SharedState


class SharedRedisCache(RedisBackend):
    """aiocache's Redis backend over the process's one client (``gateway.state.redis``)."""

    NAME = "shared-redis"
    #: Bytes of each entry the purge reads to find its header (a longer header is read in a second step).
    PURGE_PREFIX_BYTES = 1024

    def __init__(self, state: SharedState) -> None:
        # Not RedisBackend.__init__: it builds a connection pool of its own. The shared client is read
        # on each use (it exists from the app's start on).
        BaseCache.__init__(self, serializer=bytes_serializer(), timeout=0)
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


__all__ = ["SharedRedisCache"]
