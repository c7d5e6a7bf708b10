"""The ``cache`` middleware: answers a repeated request from the store, and stores what it did not.

Per call with ``cache_enabled``: the key (:mod:`.key`); a stored, live entry is a hit, answered with no
upstream call (a stream when the call asks for one, through the endpoint's ``replay``); otherwise the
call goes on, and its answer is stored when it is a whole, successful one (a complete JSON answer, or
a stream that ended cleanly, assembled by the endpoint's ``accumulator``).

Identical misses make one upstream call (single-flight): in the process, the first one leads and the
others wait for its answer; on Redis, the leader also holds a lock key (``SET NX PX``) so that the
other replicas' identical misses poll for its entry instead of calling upstream. Every wait is bounded
(``wait_timeout``), and a leader that fails or gives no storable answer lets the others go upstream.

Redis unreachable (``gateway.state.unavailable``): that request goes on with no cache, a
warning goes to the process log (at most one per ``warn_interval``) and
``respan_gateway_cache_unavailable_total`` counts it; a request never fails because of the cache.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

import msgspec
import structlog

from respan_gateway import (
    CacheInfo, Call, CallNext, Chunk, ConfigError, Endpoint, Gateway, JSONResult, Result, StreamResult, aclose,
)
from respan_gateway.hookspecs import CacheStats

from .backends import BoundedMemoryCache, glob_escape, read, write
from .entry import EntryMeta, pack, unpack
from .key import digest, options_of
from .settings import CacheSettings

log = structlog.get_logger("respan_gateway.cache")

HEADER = "x-respan-cache"
#: What a failing store raises: Redis unreachable or refusing (the request goes on uncached).

_decode = msgspec.json.decode
_encode = msgspec.json.Encoder().encode


class _Flight:
    """The first of identical misses in this process: the others wait for ``future`` (the entry, or None)."""

    __slots__ = ("key", "future", "started", "lock", "degraded", "ended")

    def __init__(self, key: str, started: float) -> None:
        self.key = key
        self.future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self.started = started
        self.lock: tuple[str, str] | None = None  # (lock key, token) when this process holds the Redis lock
        self.degraded = False  # Redis failed for this call: nothing is stored
        self.ended = False


class ResponseCache:
    """The middleware (order 600). ``clock`` (wall-clock seconds) dates entries and judges their TTL;
    a test replaces it to move time."""

    def __init__(self, settings: CacheSettings, gateway: Gateway) -> None:
        _check(settings)
        self.settings = settings
        self.state = gateway.state
        if settings.backend == "redis" and not gateway.state.shared:
            raise ConfigError(f'{gateway.config.source}: `cache.backend = "redis"` needs `[state] redis_url` '
                              '(or `backend = "auto"` or "memory" for the in-process cache)')
        self.shared = settings.backend == "redis" or (settings.backend == "auto" and gateway.state.shared)
        self.clock = time.time
        self.memory: BoundedMemoryCache | None = None
        #: What a store operation raises when the store cannot answer (``errors`` of the admin API too).
        self.errors: tuple[type[BaseException], ...]
        if self.shared:  # redis is imported here only: a process without Redis never loads it
            from redis.exceptions import RedisError

            from .shared import SharedRedisCache

            self.store: Any = SharedRedisCache(gateway.state)
            self.errors = (*gateway.state.unavailable, RedisError)
        else:
            self.memory = self.store = BoundedMemoryCache(
                max_entries=settings.max_entries, max_bytes=settings.max_bytes, clock=lambda: self.clock())
            self.errors = gateway.state.unavailable
        self.endpoints: dict[str, Endpoint] = {e.kind: e for e in gateway.endpoints}
        self.ignored = frozenset(settings.ignore_fields)
        self.flights: dict[str, _Flight] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._warned_at = float("-inf")
        self._suppressed = 0

        r = gateway.metrics
        self.misses = r.counter("respan_gateway_cache_misses_total",
                                "Requests with cache_enabled not answered from the response cache (hits: respan_gateway_cache_hits_total).",
                                ("endpoint",))
        self.stores = r.counter("respan_gateway_cache_stores_total",
                                "Answers offered to the response cache, by result (stored, too_large, not_cacheable).",
                                ("endpoint", "result"))
        self.coalesced = r.counter("respan_gateway_cache_coalesced_total",
                                   "Identical concurrent misses answered by the first one's upstream call (single-flight).",
                                   ("endpoint",))
        self.unavailable = r.counter("respan_gateway_cache_unavailable_total",
                                     "Cache operations that failed on Redis (the request went on uncached), by operation.",
                                     ("operation",))
        if self.memory is not None:
            memory = self.memory
            r.gauge("respan_gateway_cache_memory_entries", "Entries in the in-process response cache.", source=lambda: len(memory))
            r.gauge("respan_gateway_cache_memory_bytes", "Bytes of the entries in the in-process response cache.", source=lambda: memory.bytes)
            r.gauge("respan_gateway_cache_memory_evictions", "Entries the in-process cache dropped to stay within its bounds (since start).",
                    source=lambda: memory.evictions)

        # What the cache holds, for other plugins (the dashboard's usage page): hookspecs.CacheStats.
        gateway.provide(CacheStats, self)

    async def stats(self, tenant: str) -> dict[str, Any]:
        """The CacheStats service: the tenant's entries are counted in memory only (on Redis that would
        be a SCAN of the whole keyspace per page view)."""
        entries = None
        if self.memory is not None:
            entries = self.memory.count(self.state.key("cache", tenant) + ":")
        return {"backend": "redis" if self.shared else "memory", "entries": entries,
                "default_ttl": self.settings.default_ttl}

    # -- life cycle -------------------------------------------------------------------------------
    async def shutdown(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.close()

    # -- the middleware ---------------------------------------------------------------------------
    async def __call__(self, call: Call, call_next: CallNext) -> Result:
        if not call.params.cache_enabled or call.rejection is not None:
            return await call_next(call)
        call.response_headers[HEADER] = "MISS"
        endpoint = self.endpoints.get(call.kind)
        if endpoint is None or (call.stream and (endpoint.replay is None or endpoint.accumulator is None)):
            self.misses.inc((call.kind,))  # a stream this endpoint cannot replay (embeddings): never cached
            return await call_next(call)
        s = self.settings
        ttl = min(call.params.cache_ttl if call.params.cache_ttl is not None else s.default_ttl, s.max_ttl)
        key_digest = digest(call, endpoint, self.ignored)
        call.outcome.cache = CacheInfo(key=key_digest, hit=False, ttl=ttl)
        if ttl <= 0:
            self.misses.inc((call.kind,))
            return await call_next(call)
        tenant = call.principal.tenant
        key = self.state.key("cache", tenant, key_digest)
        try:
            found = self._live(await read(self.store, key))
        except self.errors as exc:
            self._unavailable("get", exc)
            self.misses.inc((call.kind,))
            return await call_next(call)
        if found is not None:
            return self._hit(call, endpoint, *found)

        loop = asyncio.get_running_loop()
        flight = self.flights.get(key)
        if flight is not None and loop.time() - flight.started < s.wait_timeout:
            value = await self._wait(flight)
            found = self._live(value)
            if found is not None:
                self.coalesced.inc((call.kind,))
                return self._hit(call, endpoint, *found)
            return await self._miss(call, call_next, endpoint, key, ttl, None)  # the leader failed: go upstream

        flight = self.flights[key] = _Flight(key, loop.time())
        try:
            if self.shared:
                found = await self._follow_replicas(call, flight, tenant, key_digest, key)
                if found is not None:
                    self._end(flight, found[2])
                    self.coalesced.inc((call.kind,))
                    return self._hit(call, endpoint, found[0], found[1])
            return await self._miss(call, call_next, endpoint, key, ttl, flight)
        except BaseException:
            self._end(flight, None)
            raise

    async def _follow_replicas(self, call: Call, flight: _Flight, tenant: str, key_digest: str,
                               key: str) -> tuple[EntryMeta, bytes, bytes] | None:
        """Take the replicas' lock for this key, or (another replica holds it) wait for its entry."""
        lock_key = self.state.key("cache-lock", tenant, key_digest)
        token = uuid.uuid4().hex
        try:
            try:
                await self.store.add(lock_key, token.encode(), ttl=float(self.settings.lock_ttl))
            except ValueError:  # another replica leads: look for its answer until it is stored or it gave up
                value = await self._poll(key, lock_key)
                found = self._live(value)
                return (*found, value) if found is not None and value is not None else None
            flight.lock = (lock_key, token)
        except self.errors as exc:
            self._unavailable("lock", exc)
            flight.degraded = True
        return None

    async def _poll(self, key: str, lock_key: str) -> bytes | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.wait_timeout
        while loop.time() < deadline:
            await asyncio.sleep(self.settings.poll_interval)
            value = await self.store.get(key)
            if value is not None:
                return value
            if not await self.store.exists(lock_key):  # the leader ended: one last look, then go upstream
                return await self.store.get(key)
        return None

    async def _wait(self, flight: _Flight) -> bytes | None:
        try:
            return await asyncio.wait_for(asyncio.shield(flight.future), self.settings.wait_timeout)
        except asyncio.TimeoutError:
            return None

    async def _miss(self, call: Call, call_next: CallNext, endpoint: Endpoint, key: str, ttl: float,
                    flight: _Flight | None) -> Result:
        self.misses.inc((call.kind,))
        result = await call_next(call)
        if isinstance(result, StreamResult):
            if not 200 <= result.status < 300:
                self._end(flight, None)
                return result
            result.chunks = _Capture(self, call, endpoint, result.chunks, key, ttl, flight)
            return result
        value = self._entry(call, endpoint, result.status, result.data, result.content, ttl)
        if value is not None and not (flight is not None and flight.degraded):
            await self._store(call, key, value, ttl)
        self._end(flight, value)
        return result

    def _hit(self, call: Call, endpoint: Endpoint, meta: EntryMeta, body: bytes) -> Result:
        info = call.outcome.cache
        assert info is not None
        info.hit, info.age = True, max(0.0, self.clock() - meta.created)
        call.outcome.usage = meta.usage
        options = options_of(call)
        if options.omit_log or options.omit_logs:
            call.outcome.omit_log = True
        call.response_headers[HEADER] = "HIT"
        if call.stream:
            assert endpoint.replay is not None
            return StreamResult(_chunks_of(endpoint.replay(_decode(body), call)))
        return JSONResult(200, body)

    # -- entries ----------------------------------------------------------------------------------
    def _live(self, value: bytes | None) -> tuple[EntryMeta, bytes] | None:
        """The header and answer of a stored entry that has not outlived its TTL (by ``clock``)."""
        if value is None:
            return None
        entry = unpack(value)
        if entry is None or self.clock() - entry[0].created >= entry[0].ttl:
            return None
        return entry

    def _entry(self, call: Call, endpoint: Endpoint, status: int, answer: Any, content: bytes, ttl: float) -> bytes | None:
        """The entry to store for a complete answer, or None when it is not a whole, successful one."""
        if not 200 <= status < 300 or answer is None:
            return None
        if endpoint.cacheable is not None and not endpoint.cacheable(answer):
            self.stores.inc((call.kind, "not_cacheable"))
            return None
        answered = next((a.model for a in reversed(call.attempts) if a.error is None and (a.status or 200) < 400), None)
        customer = call.outcome.customer
        meta = EntryMeta(tenant=call.principal.tenant, endpoint=call.kind, model=answered or call.model,
                         customer=customer.identifier if customer is not None else None,
                         created=self.clock(), ttl=ttl, usage=call.outcome.usage)
        return pack(meta, content)

    async def _store(self, call: Call, key: str, value: bytes, ttl: float) -> None:
        if len(value) > self.settings.max_entry_bytes:
            self.stores.inc((call.kind, "too_large"))
            return
        try:
            await write(self.store, key, value, float(ttl))
        except self.errors as exc:
            self._unavailable("set", exc)
            return
        self.stores.inc((call.kind, "stored"))

    def _end(self, flight: _Flight | None, value: bytes | None) -> None:
        """The leader is done: its followers get ``value`` (None: go upstream), the lock goes."""
        if flight is None or flight.ended:
            return
        flight.ended = True
        if self.flights.get(flight.key) is flight:
            del self.flights[flight.key]
        if not flight.future.done():
            flight.future.set_result(value)
        if flight.lock is not None:
            task = asyncio.ensure_future(self._release(*flight.lock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _release(self, lock_key: str, token: str) -> None:
        assert self.shared
        try:  # only our own lock (compare and delete); it expires by itself anyway
            await self.store._redlock_release(lock_key, token)
        except self.errors as exc:
            self._unavailable("unlock", exc)

    def _unavailable(self, operation: str, exc: BaseException) -> None:
        self.unavailable.inc((operation,))
        now = time.monotonic()
        if now - self._warned_at < self.settings.warn_interval:
            self._suppressed += 1
            return
        log.warning("cache_unavailable", operation=operation, error=type(exc).__name__,
                    detail=str(exc)[:200], suppressed=self._suppressed,
                    note="Redis is unreachable: requests are answered without the cache")
        self._warned_at, self._suppressed = now, 0

    # -- the admin API ----------------------------------------------------------------------------
    async def purge(self, tenant: str, *, model: str | None = None, customer: str | None = None) -> int:
        """Delete the tenant's entries (those of ``model`` and/or ``customer`` when given); the count."""
        def match(meta: EntryMeta) -> bool:
            return (meta.tenant == tenant and (model is None or meta.model == model)
                    and (customer is None or meta.customer == customer))

        if self.shared:
            # Exactly 64 characters after the prefix: the tenant "a" never matches the tenant "a:b".
            pattern = glob_escape(self.state.key("cache", tenant)) + ":" + "?" * 64
            return await self.store.purge(pattern, match if model is not None or customer is not None else None)
        return await self.store.purge(self.state.key("cache", tenant) + ":", match)


class _Capture:
    """A miss's stream, relayed unchanged and assembled by the endpoint's accumulator; stored once it
    ended cleanly. A stream that fails, or that the client leaves, is not stored."""

    __slots__ = ("cache", "call", "endpoint", "chunks", "key", "ttl", "flight", "accumulator", "ended")

    def __init__(self, cache: ResponseCache, call: Call, endpoint: Endpoint, chunks: AsyncIterator[Chunk],
                 key: str, ttl: float, flight: _Flight | None) -> None:
        assert endpoint.accumulator is not None
        self.cache, self.call, self.endpoint, self.chunks = cache, call, endpoint, chunks
        self.key, self.ttl, self.flight = key, ttl, flight
        self.accumulator = endpoint.accumulator()
        self.ended = False

    def __aiter__(self) -> _Capture:
        return self

    async def __anext__(self) -> Chunk:
        try:
            chunk = await anext(self.chunks)
        except StopAsyncIteration:
            if not self.ended:
                self.ended = True
                await self._complete()
            raise
        except BaseException:
            self._fail()
            raise
        self.accumulator.feed(chunk)
        return chunk

    async def _complete(self) -> None:
        cache, call = self.cache, self.call
        value = None
        try:
            answer = self.accumulator.answer()
            value = cache._entry(call, self.endpoint, 200, answer, _encode(answer), self.ttl)
            if value is not None and not (self.flight is not None and self.flight.degraded):
                await cache._store(call, self.key, value, self.ttl)
        finally:
            cache._end(self.flight, value)

    def _fail(self) -> None:
        if not self.ended:
            self.ended = True
            self.cache._end(self.flight, None)

    async def aclose(self) -> None:
        self._fail()
        await aclose(self.chunks)


async def _chunks_of(chunks: Iterable[Chunk]) -> AsyncIterator[Chunk]:
    for chunk in chunks:
        yield chunk


def _check(s: CacheSettings) -> None:
    for name in ("default_ttl", "max_ttl", "wait_timeout", "lock_ttl", "poll_interval", "warn_interval"):
        if getattr(s, name) < 0:
            raise ConfigError(f"`cache.{name}` must not be negative")
    if s.poll_interval == 0:
        raise ConfigError("`cache.poll_interval` must be more than 0")
    for name in ("max_entries", "max_bytes", "max_entry_bytes"):
        if getattr(s, name) < 0:
            raise ConfigError(f"`cache.{name}` must not be negative")


__all__ = ["HEADER", "ResponseCache"]
