"""The ``auth`` middleware and the gateway's authenticator: config keys, then database keys (cached)."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

import structlog

from respan_gateway import AuthenticationFailed, Call, CallNext, GatewayError, KeyLimits, Principal, Result, Settings
from respan_gateway.config import ConfigError
from respan_gateway.database import StoreUnavailable
from respan_gateway.timestamps import parse_iso

from .store import KEY_FORMAT, ApiKeyStore, hash_key

log = structlog.get_logger("respan_gateway.auth")

INVALID = "your API key is invalid or expired"


class KeySettings(Settings):
    # The key itself, or its SHA-256 hex digest (prefer the hash in files under review).
    key: str = ""
    key_sha256: str = ""
    tenant: str = "default"
    name: str = ""
    environment: Literal["production", "test"] = "production"
    # ISO 8601 date or date-time (UTC when no zone); after it the key is refused.
    expires_at: str | None = None
    # May sign in to the dashboard (/ui/) and use the keys API, both for this key's tenant only.
    admin: bool = False
    # The key's limits (spend, requests, tokens per period), enforced by the limits plugin.
    limits: KeyLimits | None = None


class AuthSettings(Settings):
    keys: list[KeySettings] = []
    # Seconds a database key's lookup (found or not) is reused before the database is asked again:
    # the bound on how long a revoke, an expiry change or new limits take to reach every process.
    key_cache_ttl: float = 10.0
    # Most keys remembered per process, separately for known keys and for unknown ones (a flood of
    # bad keys evicts the oldest unknown ones, never a known key).
    key_cache_size: int = 10_000


class KeyStoreUnavailable(GatewayError):
    """503: the key is not one this process knows, and the database that would know it is down."""

    status = 503
    type = "server_error"
    code = "auth_store_unavailable"


class _Key:
    __slots__ = ("principal", "expires")

    def __init__(self, principal: Principal, expires: float | None) -> None:
        self.principal, self.expires = principal, expires


class KeyCache:
    """What the database said about each key hash, for ``ttl`` seconds (monotonic clock), LRU-bounded.

    ``found`` keeps known keys past their TTL (until evicted) so that they keep working while the
    database is unreachable; ``missing`` remembers unknown and revoked hashes."""

    def __init__(self, ttl: float, size: int) -> None:
        self.ttl, self.size = ttl, max(1, size)
        self.found: OrderedDict[str, tuple[_Key, float]] = OrderedDict()
        self.missing: OrderedDict[str, float] = OrderedDict()

    def known(self, digest: str) -> tuple[_Key | None, bool]:
        """(the cached key or None, whether that answer is fresh)."""
        now = time.monotonic()
        hit = self.found.get(digest)
        if hit is not None:
            self.found.move_to_end(digest)
            return hit[0], now - hit[1] < self.ttl
        miss = self.missing.get(digest)
        return None, miss is not None and now - miss < self.ttl

    def stale(self, digest: str) -> _Key | None:
        hit = self.found.get(digest)
        return hit[0] if hit is not None else None

    def put(self, digest: str, key: _Key | None) -> None:
        table: OrderedDict[str, Any] = self.found if key is not None else self.missing
        (self.missing if key is not None else self.found).pop(digest, None)
        table[digest] = (key, time.monotonic()) if key is not None else time.monotonic()
        table.move_to_end(digest)
        while len(table) > self.size:
            table.popitem(last=False)

    def forget(self, digest: str) -> None:
        self.found.pop(digest, None)
        self.missing.pop(digest, None)


class Auth:
    def __init__(self, settings: AuthSettings, gateway: Any) -> None:
        # Wall-clock time of the expiry checks; a test may replace it to move time forward.
        self.clock: Callable[[], float] = time.time
        self.keys: dict[str, _Key] = {}
        for i, entry in enumerate(settings.keys):
            digest = entry.key_sha256.lower() or (hash_key(entry.key) if entry.key else "")
            if len(digest) != 64:
                raise ConfigError(f"`auth.keys[{i}]`: give `key` or a 64-hex-digit `key_sha256`")
            limits = entry.limits if entry.limits != KeyLimits() else None
            principal = Principal(tenant=entry.tenant, key_id=entry.name or digest[:8], environment=entry.environment,
                                  admin=entry.admin, limits=limits)
            self.keys[digest] = _Key(principal, _parse_expiry(entry.expires_at, i))
        if settings.key_cache_ttl < 0:
            raise ConfigError("`auth.key_cache_ttl`: must be >= 0 seconds")
        self.cache = KeyCache(settings.key_cache_ttl, settings.key_cache_size)
        self._lookups: dict[str, asyncio.Task[_Key | None]] = {}
        self._warned = -1e9
        # The database keys' store: the database exists once a plugin (this one) declared a store.
        self.store = ApiKeyStore(gateway.database) if gateway.database is not None else None
        if not self.keys:
            log.warning("auth_no_config_keys", message="no keys in [auth] keys: only keys issued by the keys API or "
                        "`respan-gateway keys create` are accepted (create the first admin key with --admin)")
        gateway.set_authenticator(self.authenticate)

    async def authenticate(self, headers: Any) -> Principal:
        auth = headers.get("authorization")
        if auth:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthenticationFailed("the Authorization header must be `Bearer <gateway API key>`")
            token = token.strip()
        else:
            token = headers.get("x-api-key", "").strip()
        if not token:
            raise AuthenticationFailed("no API key: send `Authorization: Bearer <gateway API key>`")
        # Looked up by hash: lookup timing says nothing about the key itself.
        digest = hash_key(token)
        entry = self.keys.get(digest)
        if entry is None and self.store is not None and KEY_FORMAT.match(token):
            entry = await self.lookup(digest)
        if entry is None:
            raise AuthenticationFailed(INVALID)
        if entry.expires is not None and self.clock() >= entry.expires:
            raise AuthenticationFailed(INVALID)
        return entry.principal

    async def lookup(self, digest: str) -> _Key | None:
        """The database key of this hash (None: unknown or revoked), through the cache."""
        cached, fresh = self.cache.known(digest)
        if fresh:
            return cached
        # One database query per hash at a time, whoever else is waiting for the same key.
        task = self._lookups.get(digest)
        if task is None:
            task = asyncio.create_task(self._fetch(digest))
            self._lookups[digest] = task
            task.add_done_callback(lambda t: self._done(digest, t))
        return await asyncio.shield(task)

    def _done(self, digest: str, task: asyncio.Task[Any]) -> None:
        self._lookups.pop(digest, None)
        if not task.cancelled():
            task.exception()  # retrieved here: a caller that left does not leave it unread

    async def _fetch(self, digest: str) -> _Key | None:
        assert self.store is not None
        try:
            row = await self.store.by_hash(digest)
        except StoreUnavailable as exc:
            known = self.cache.stale(digest)
            if known is not None:
                return known  # a key this process knew keeps working while the database is down
            if time.monotonic() - self._warned > 10:  # one line per 10 s, however many keys are refused
                self._warned = time.monotonic()
                log.warning("auth_store_unavailable", error=str(exc))
            raise KeyStoreUnavailable(
                "the gateway cannot check this API key now: its key database is unreachable; retry shortly",
                headers={"retry-after": "1"}) from None
        if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_sha256, digest):
            self.cache.put(digest, None)
            return None
        key = _Key(row.principal(), row.expires_at)
        self.cache.put(digest, key)
        return key

    def forget(self, digest: str) -> None:
        """Drop this process's cached lookup of a key (after this process changed or revoked it)."""
        self.cache.forget(digest)

    async def __call__(self, call: Call, call_next: CallNext) -> Result:
        call.principal = await self.authenticate(call.headers)
        return await call_next(call)


def _parse_expiry(value: str | None, index: int) -> float | None:
    if not value:
        return None
    try:
        return parse_iso(value)
    except ValueError:
        raise ConfigError(f"`auth.keys[{index}].expires_at`: not an ISO 8601 date: {value!r}") from None
