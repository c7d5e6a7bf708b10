"""Weighted deployments of a provider, and the cooldown of those that keep failing.

A *deployment* is one way to reach a provider: one of its configured keys (``[providers.<id>] keys``),
optionally with its own ``base_url``. A provider without a ``keys`` list has one implicit deployment.
Health is tracked per (provider, deployment, upstream model): a rate limit or a missing model on one
model does not cool down the provider's other models.

Cooldown works like a circuit breaker: after ``allowed_fails`` consecutive failures a deployment is
skipped for ``cooldown_seconds`` (at least the provider's ``Retry-After``); when that time is over it
is tried again, and one more failure cools it down again at once, while a success clears it
(``[deployments] allowed_fails`` and ``cooldown_seconds``). The state lives in the process: each
replica (and each worker) keeps its own, and each gateway built in it too (one pool per gateway,
see :class:`PoolSlot`).
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import msgspec

from respan_gateway import Call, CallNext, Chunk, ConfigError, GatewayError, Result, StreamResult, Target, UpstreamError, aclose

from .settings import DeploymentsSettings

if TYPE_CHECKING:
    from respan_gateway import Gateway

__all__ = ["Deployment", "DeploymentPool", "DeploymentsMiddleware", "PoolSlot", "is_deployment_fault"]

# Upstream statuses that say something about the deployment (not about the client's payload).
_DEPLOYMENT_FAULTS = frozenset({401, 403, 404, 408, 409, 429})


class Deployment(msgspec.Struct, frozen=True):
    name: str
    api_key: str
    base_url: str
    weight: float


class _Health:
    __slots__ = ("fails", "until", "tripped")

    def __init__(self) -> None:
        self.fails = 0
        self.until = 0.0
        self.tripped = False


def is_deployment_fault(exc: BaseException) -> bool:
    """True when the failure counts against the deployment (timeouts, connection, 429, 5xx, 401/403/404)."""
    if not isinstance(exc, UpstreamError):
        return False
    return exc.status >= 500 or exc.status in _DEPLOYMENT_FAULTS


class DeploymentPool:
    """The deployments of every configured provider of one gateway, and their health."""

    def __init__(self, gateway: Gateway, settings: DeploymentsSettings) -> None:
        self.allowed_fails = settings.allowed_fails
        self.cooldown_seconds = settings.cooldown_seconds
        self.by_provider: dict[str, list[Deployment]] = {}
        source = gateway.config.source
        for pid, adapter in gateway.providers.items():
            keys = adapter.settings.keys
            if not keys:
                continue
            deployments = []
            for i, key in enumerate(keys):
                # The keys are the core's `[providers.<id>]` table, not this plugin's settings: checked here.
                if key.weight <= 0:
                    raise ConfigError(f"{source}: `providers.{pid}.keys[{i}].weight`: must be greater than 0")
                deployments.append(Deployment(key.name or f"{pid}-{i + 1}", key.api_key, key.base_url.rstrip("/"), key.weight))
            names = [d.name for d in deployments]
            if len(set(names)) != len(names):
                raise ConfigError(f"{source}: `providers.{pid}.keys`: two deployments have the same name")
            self.by_provider[pid] = deployments
        self._health: dict[tuple[str, str | None, str], _Health] = {}

    # -- state ------------------------------------------------------------------------------------
    def _cooling(self, key: tuple[str, str | None, str], now: float) -> bool:
        health = self._health.get(key)
        return health is not None and health.until > now

    def available(self, target: Target) -> bool:
        """False when every deployment that could serve ``target`` is cooling down."""
        now = time.monotonic()
        deployments = self.by_provider.get(target.provider)
        if not deployments:
            return not self._cooling((target.provider, None, target.upstream_model), now)
        return any(not self._cooling((target.provider, d.name, target.upstream_model), now) for d in deployments)

    def choose(self, target: Target) -> Deployment | None:
        """A deployment for this attempt, by weight among those not cooling down.

        When all are cooling down, the one that comes back first (better a chance than a certain
        error). None for a provider without a ``keys`` list.
        """
        deployments = self.by_provider.get(target.provider)
        if not deployments:
            return None
        if len(deployments) == 1:
            return deployments[0]
        now = time.monotonic()
        model = target.upstream_model
        ready = [d for d in deployments if not self._cooling((target.provider, d.name, model), now)]
        if not ready:
            return min(deployments, key=lambda d: self._health[(target.provider, d.name, model)].until)
        if len(ready) == 1:
            return ready[0]
        return random.choices(ready, [d.weight for d in ready])[0]

    def report(self, provider: str, deployment: str | None, model: str, error: BaseException | None) -> None:
        """Record the outcome of one attempt: ``error`` None is a success."""
        key = (provider, deployment, model)
        health = self._health.get(key)
        if error is None:
            if health is not None:
                del self._health[key]
            return
        if health is None:
            health = self._health[key] = _Health()
        health.fails += 1
        if health.tripped or health.fails >= self.allowed_fails:
            retry_after = getattr(error, "retry_after", None) or 0.0
            health.until = time.monotonic() + max(self.cooldown_seconds, retry_after)
            health.tripped = True
            health.fails = 0


class PoolSlot:
    """Where the ``deployments`` middleware of a gateway leaves its pool for that gateway's routing.

    The plugin makes one per gateway (its hook runs once per build) and hands it to both
    middleware factories; routing reads ``pool`` per request, None while no ``deployments``
    middleware exists.
    """

    __slots__ = ("pool",)

    def __init__(self) -> None:
        self.pool: DeploymentPool | None = None


class DeploymentsMiddleware:
    """Per attempt: pick the provider's deployment for ``call.target`` and learn from the outcome.

    Runs after reliability (so every retry and fallback picks again) and before credentials (so a
    request's own credentials still win over the configured keys).
    """

    def __init__(self, pool: DeploymentPool) -> None:
        self.pool = pool

    async def __call__(self, call: Call, call_next: CallNext) -> Result:
        target = call.target
        if target is None:
            return await call_next(call)
        chosen = self.pool.choose(target)
        if chosen is not None and not target.api_key:
            target.api_key = chosen.api_key or None
            if chosen.base_url:
                target.base_url = chosen.base_url
            target.deployment = chosen.name
        provider, model = target.provider, target.upstream_model
        name = chosen.name if chosen is not None else None
        try:
            result = await call_next(call)
        except GatewayError as exc:
            if self._ours(call.target, chosen):
                self.pool.report(provider, name, model, exc if is_deployment_fault(exc) else None)
            raise
        except BaseException:
            # Cancelled before an answer: reliability's first-byte or total timeout ran out.
            if self._ours(call.target, chosen):
                self.pool.report(provider, name, model, _TIMED_OUT)
            raise
        if not self._ours(call.target, chosen):
            return result
        if isinstance(result, StreamResult):
            result.chunks = self._watch(result.chunks, provider, name, model)
        else:
            self.pool.report(provider, name, model, None)
        return result

    @staticmethod
    def _ours(target: Target | None, chosen: Deployment | None) -> bool:
        """False when a later stage (the request's own credentials) replaced the key or endpoint."""
        if target is None:
            return False
        if chosen is None:
            return not target.api_key and not target.base_url
        return (target.deployment == chosen.name and (target.api_key or "") == chosen.api_key
                and (not chosen.base_url or target.base_url == chosen.base_url))

    async def _watch(self, chunks: AsyncIterator[Chunk], provider: str, name: str | None, model: str) -> AsyncIterator[Chunk]:
        """Report the stream's health: success at its first chunk, failure if it breaks before that."""
        started = False
        try:
            async for chunk in chunks:
                if not started:
                    started = True
                    self.pool.report(provider, name, model, None)
                yield chunk
        except GatewayError as exc:
            if is_deployment_fault(exc):
                self.pool.report(provider, name, model, exc)
            raise
        except BaseException as exc:
            # Before the first chunk a cancellation is reliability's timeout; after it, the client left.
            if not started and not isinstance(exc, GeneratorExit):
                self.pool.report(provider, name, model, _TIMED_OUT)
            raise
        finally:
            await aclose(chunks)


_TIMED_OUT = UpstreamError("the attempt timed out", status=504)
