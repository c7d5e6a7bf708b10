"""cache: Respan's response cache (SPEC section 5) on the embedded memory backend or on Redis.

A request with ``cache_enabled`` is answered from the cache when the same request (README.md, "The
key") was answered before, streaming or not, on every endpoint that can replay its answers; hits cost
nothing, are logged with model ``respan/cache``, and carry ``x-respan-cache: HIT``. Identical misses
make one upstream call, across replicas on Redis. ``DELETE /api/caches/`` purges. See README.md
beside this file for the key, every setting and the metrics.
"""

from __future__ import annotations

from respan_gateway import hookimpl
from respan_gateway.hookspecs import RegisterMiddleware, RegisterRoute

from .api import ROUTES
from .middleware import HEADER, ResponseCache
from .settings import CacheSettings


@hookimpl
def register_middlewares(register: RegisterMiddleware) -> None:
    # After params (the typed cache params, the customer), limits and prompts (a rendered prompt is
    # part of the key), before routing: a hit needs no target and makes no attempt.
    register("cache", ResponseCache, order=600, settings=CacheSettings)


@hookimpl
def register_routes(register: RegisterRoute) -> None:
    for path, endpoint, methods in ROUTES:
        register(path, endpoint, methods=methods)


__all__ = ["CacheSettings", "HEADER", "ResponseCache"]
