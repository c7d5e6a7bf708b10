"""The process's connection to shared state: one Redis client, configured once in ``[state]``.

Replicas behind a load balancer agree on budgets, rate limits and cached answers only through a store
they share. That store is Redis, and this module is the one place that connects to it: every plugin
that keeps shared state (the response cache, the limits) uses ``gateway.state.redis``, so a process
holds one connection pool whatever the number of such plugins.

Without ``[state] redis_url`` (the embedded default) there is no Redis: ``gateway.state.shared`` is
False and each plugin keeps its state in the process, behind the same interface as its Redis
implementation. That is exact for one process (one worker); several workers or replicas need Redis.

Redis is not needed to start: the client connects on first use, and a command fails fast
(``command_timeout``). What a plugin does when Redis is unreachable is its own documented choice (the
cache degrades to no cache; budgets fail closed with a 503); it catches ``gateway.state.unavailable``.
Without Redis the ``redis`` package is never imported (it costs a worker some 8 MB and 0.7 s: it
imports OpenTelemetry's SDK among its 180 modules).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .config import StateSettings

if TYPE_CHECKING:
    import redis.asyncio


#: Without Redis nothing shared can be unreachable but a socket or a deadline.
LOCAL_UNAVAILABLE: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError)
_unavailable: tuple[type[BaseException], ...] | None = None


def unavailable_errors() -> tuple[type[BaseException], ...]:
    """What a Redis command raises when Redis cannot be reached or answers too late (imports redis)."""
    global _unavailable
    if _unavailable is None:
        try:
            from redis.exceptions import ConnectionError, TimeoutError
        except ImportError:  # pragma: no cover - redis is a dependency
            _unavailable = LOCAL_UNAVAILABLE
        else:
            _unavailable = (ConnectionError, TimeoutError, *LOCAL_UNAVAILABLE)
    return _unavailable


def __getattr__(name: str) -> Any:
    # ``UNAVAILABLE``, for who imports it: redis is imported then, not with this module.
    if name == "UNAVAILABLE":
        return unavailable_errors()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class SharedState:
    """``gateway.state``: the Redis client of this process (when ``[state] redis_url`` is set)."""

    def __init__(self, settings: StateSettings) -> None:
        self.settings = settings
        self.shared = bool(settings.redis_url)
        self.key_prefix = settings.key_prefix
        #: What to catch around a Redis command (``UNAVAILABLE``); without Redis, no import of redis.
        self.unavailable = unavailable_errors() if self.shared else LOCAL_UNAVAILABLE
        self._client: redis.asyncio.Redis | None = None
        if self.shared:
            parts = urlsplit(settings.redis_url)
            if parts.scheme not in ("redis", "rediss", "unix"):
                raise ValueError(f"`state.redis_url`: expected redis://, rediss:// or unix://, not `{parts.scheme}://`")

    def secrets(self) -> tuple[str, ...]:
        """What the process log must never show: the password in the URL."""
        password = urlsplit(self.settings.redis_url).password if self.shared else None
        return (password,) if password else ()

    @property
    def redis(self) -> redis.asyncio.Redis:
        """The shared client (raw bytes in and out). Only when ``shared``, from ``startup()`` on."""
        if self._client is None:
            raise RuntimeError("no Redis: `[state] redis_url` is not set, or the app is not running")
        return self._client

    def key(self, *parts: str) -> str:
        """A key under this gateway's prefix: ``key("cache", tenant, digest)`` -> ``respan:cache:<tenant>:<digest>``."""
        return self.key_prefix + ":".join(parts)

    async def start(self) -> None:
        if not self.shared or self._client is not None:
            return
        import redis.asyncio

        s = self.settings
        self._client = redis.asyncio.Redis.from_url(
            s.redis_url, socket_connect_timeout=s.connect_timeout, socket_timeout=s.command_timeout,
            max_connections=s.max_connections, decode_responses=False, health_check_interval=30,
        )

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def ping(self) -> bool:
        """Whether Redis answers now (False when not shared)."""
        if self._client is None:
            return False
        try:
            return bool(await self._client.ping())
        except self.unavailable:
            return False

    def describe(self) -> dict[str, Any]:
        """For the process log at start-up: where the state lives, with no password."""
        if not self.shared:
            return {"state": "in-process"}
        parts = urlsplit(self.settings.redis_url)
        host = parts.hostname or parts.path
        return {"state": "redis", "redis": f"{parts.scheme}://{host}{':' + str(parts.port) if parts.port else ''}{parts.path if parts.hostname else ''}"}
