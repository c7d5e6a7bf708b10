"""Weighted deployments of a provider, and the cooldown of those that keep failing (a circuit breaker).

A *deployment* is one way to reach a provider: one of its configured keys (``[providers.<id>] keys``),
optionally with its own ``base_url``. A provider without a ``keys`` list has one implicit deployment.
Health is tracked per (provider, deployment, upstream model): a rate limit or a missing model on one
model does not cool down the provider's other models.

The breaker (``[deployments] allowed_fails`` and ``cooldown_seconds``): after ``allowed_fails``
consecutive failures a deployment is *open*, skipped for ``cooldown_seconds`` (at least the
provider's ``Retry-After``). Then it is *half-open*: one request, the probe, holds a lease on it and
tries it, while every other request keeps going to the fallbacks; the probe's success closes the
breaker (traffic is back), its failure opens it again for another cooldown. So a primary that is
still down costs one attempt per cooldown, not one per request.

Where the state lives: with ``[state] redis_url``, in Redis (a hash per key and a ``SET NX PX``
lease for the probe), so that every worker and replica skips the same deployments and probes once;
otherwise in the process (each gateway built in it has its own, see :class:`PoolSlot`). Times come
from ``DeploymentPool.clock`` (wall-clock seconds, comparable across replicas; a test replaces it).
When Redis cannot be reached, the pool knows nothing: every deployment counts as healthy.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Literal

import msgspec
import structlog

from respan_gateway import Call, CallNext, Chunk, ConfigError, GatewayError, Result, StreamResult, Target, UpstreamError, aclose

from .settings import DeploymentsSettings

if TYPE_CHECKING:
    from respan_gateway import Gateway
    from respan_gateway.state import SharedState

__all__ = ["Deployment", "DeploymentPool", "DeploymentsMiddleware", "PoolSlot", "is_deployment_fault", "Readiness"]

log = structlog.get_logger("respan_gateway")

# Upstream statuses that say something about the deployment (not about the client's payload).
_DEPLOYMENT_FAULTS = frozenset({401, 403, 404, 408, 409, 429})

HealthKey = tuple[str, str | None, str]
#: What routing learns of a candidate: healthy, this request is its probe, or cooling down.
Readiness = Literal["ready", "probe", "cooling"]


class Deployment(msgspec.Struct, frozen=True):
    name: str
    api_key: str
    base_url: str
    weight: float


class Health(msgspec.Struct):
    """One key's breaker: consecutive failures, open until (clock seconds), tripped (open or half-open)."""

    fails: int = 0
    until: float = 0.0
    tripped: bool = False

    def closed(self) -> bool:
        return not self.tripped

    def half_open(self, now: float) -> bool:
        return self.tripped and self.until <= now


def is_deployment_fault(exc: BaseException) -> bool:
    """True when the failure counts against the deployment (timeouts, connection, 429, 5xx, 401/403/404)."""
    if not isinstance(exc, UpstreamError):
        return False
    return exc.status >= 500 or exc.status in _DEPLOYMENT_FAULTS


class _LocalStore:
    """The breakers of one process."""

    def __init__(self) -> None:
        self._health: dict[HealthKey, Health] = {}
        self._leases: dict[HealthKey, tuple[str, float]] = {}

    async def read(self, keys: list[HealthKey]) -> list[Health | None]:
        return [self._health.get(k) for k in keys]

    async def fail(self, key: HealthKey, allowed: int, until: float) -> None:
        health = self._health.setdefault(key, Health())
        health.fails += 1
        if health.tripped or health.fails >= allowed:
            health.until, health.tripped, health.fails = until, True, 0
            self._leases.pop(key, None)

    async def clear(self, key: HealthKey) -> None:
        self._health.pop(key, None)
        self._leases.pop(key, None)

    async def lease(self, key: HealthKey, owner: str, now: float, seconds: float) -> bool:
        held = self._leases.get(key)
        if held is not None and held[0] != owner and held[1] > time.monotonic():
            return False
        if held is None or held[0] != owner:
            self._leases[key] = (owner, time.monotonic() + seconds)
        return True


# One failure, atomically: count it; trip (or trip again) the breaker; the probe lease goes with it.
_FAIL = """
local fails = redis.call('HINCRBY', KEYS[1], 'fails', 1)
if redis.call('HGET', KEYS[1], 'tripped') == '1' or fails >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'until', ARGV[2], 'tripped', '1', 'fails', '0')
  redis.call('DEL', KEYS[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return fails
"""


# The probe's lease, taken only while the breaker is half-open (read again here: another replica's
# probe may have failed and tripped it since this request looked), or already this request's.
_LEASE = """
local owner = redis.call('GET', KEYS[2])
if owner == ARGV[1] then return 1 end
if owner then return 0 end
if redis.call('HGET', KEYS[1], 'tripped') ~= '1' then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'until') or '0') > tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
return 1
"""


class _RedisStore:
    """The breakers every process on the same Redis shares: ``<prefix>deployments:<provider>:<deployment>:<model>``."""

    # How long a breaker's state outlives its last failure (then the deployment counts as healthy).
    KEEP_SECONDS = 3600.0

    def __init__(self, state: SharedState) -> None:
        self.state = state
        self._warned = False

    def _key(self, key: HealthKey) -> str:
        provider, deployment, model = key
        return self.state.key("deployments", provider, deployment or "-", model)

    def _down(self, exc: BaseException) -> None:
        if not self._warned:  # once per process: the breakers are off until Redis answers again
            self._warned = True
            log.warning("deployments_state_unavailable", error=type(exc).__name__)

    async def read(self, keys: list[HealthKey]) -> list[Health | None]:
        try:
            async with self.state.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hmget(self._key(key), "fails", "until", "tripped")
                rows = await pipe.execute()
        except self.state.unavailable as exc:
            self._down(exc)
            return [None] * len(keys)
        self._warned = False
        out: list[Health | None] = []
        for fails, until, tripped in rows:
            if fails is None and until is None and tripped is None:
                out.append(None)
            else:
                out.append(Health(int(fails or 0), float(until or 0), tripped == b"1"))
        return out

    async def fail(self, key: HealthKey, allowed: int, until: float) -> None:
        name = self._key(key)
        keep = int((max(until - time.time(), 0.0) + self.KEEP_SECONDS) * 1000)
        try:
            await self.state.redis.eval(_FAIL, 2, name, name + ":probe", allowed, repr(until), keep)
        except self.state.unavailable as exc:
            self._down(exc)

    async def clear(self, key: HealthKey) -> None:
        name = self._key(key)
        try:
            await self.state.redis.delete(name, name + ":probe")
        except self.state.unavailable as exc:
            self._down(exc)

    async def lease(self, key: HealthKey, owner: str, now: float, seconds: float) -> bool:
        name = self._key(key)
        try:
            return bool(await self.state.redis.eval(_LEASE, 2, name, name + ":probe", owner, repr(now), max(1, int(seconds * 1000))))
        except self.state.unavailable as exc:
            self._down(exc)
            return True


class DeploymentPool:
    """The deployments of every configured provider of one gateway, and their health."""

    def __init__(self, gateway: Gateway, settings: DeploymentsSettings) -> None:
        self.allowed_fails = settings.allowed_fails
        self.cooldown_seconds = settings.cooldown_seconds
        # Wall-clock seconds: cooldowns written by one replica are read by the others.
        self.clock: Callable[[], float] = time.time
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
        self.shared = gateway.state.shared
        self.store: _LocalStore | _RedisStore = _RedisStore(gateway.state) if self.shared else _LocalStore()
        # Shared state: the keys this process saw failing (a success clears them; others cost no round trip).
        self._troubled: set[HealthKey] = set()

    @property
    def lease_seconds(self) -> float:
        """How long a probe holds a half-open deployment before another request may probe it."""
        return max(self.cooldown_seconds, 1.0)

    def _keys(self, target: Target) -> list[HealthKey]:
        deployments = self.by_provider.get(target.provider)
        if not deployments:
            return [(target.provider, None, target.upstream_model)]
        return [(target.provider, d.name, target.upstream_model) for d in deployments]

    async def _read(self, keys: list[HealthKey]) -> list[Health | None]:
        states = await self.store.read(keys)
        self._troubled.update(k for k, h in zip(keys, states) if h is not None)
        return states

    # -- what routing asks ------------------------------------------------------------------------
    async def readiness(self, targets: list[Target], owner: str) -> list[Readiness]:
        """For each target in order: ready (a deployment is healthy), probe (this request took the
        lease of a half-open one, and nothing before it is ready), or cooling."""
        per = [self._keys(t) for t in targets]
        states = await self._read([k for keys in per for k in keys])
        now = self.clock()
        out: list[Readiness] = []
        i = 0
        for keys in per:
            health, i = states[i:i + len(keys)], i + len(keys)
            if any(h is None or h.closed() for h in health):
                out.append("ready")
                continue
            verdict: Readiness = "cooling"
            if "ready" not in out and "probe" not in out:
                for key, h in zip(keys, health):
                    if h is not None and h.half_open(now) and await self.store.lease(key, owner, now, self.lease_seconds):
                        verdict = "probe"
                        break
            out.append(verdict)
        return out

    # -- what each attempt asks -------------------------------------------------------------------
    async def choose(self, target: Target, owner: str) -> Deployment | None:
        """A deployment for this attempt, by weight among the healthy ones and a half-open one this
        request may probe.

        When none is, the one that comes back first (better a chance than a certain error). None for
        a provider without a ``keys`` list.
        """
        deployments = self.by_provider.get(target.provider)
        if not deployments:
            return None
        if len(deployments) == 1:
            return deployments[0]
        keys = self._keys(target)
        states = await self._read(keys)
        now = self.clock()
        healthy = [d for d, h in zip(deployments, states) if h is None or h.closed()]
        probes = {d.name: key for d, key, h in zip(deployments, keys, states) if h is not None and h.half_open(now)}
        if not healthy and not probes:
            return min(zip(deployments, states), key=lambda pair: pair[1].until if pair[1] is not None else 0.0)[0]
        candidates = healthy + [d for d in deployments if d.name in probes]
        picked = candidates[0] if len(candidates) == 1 else random.choices(candidates, [d.weight for d in candidates])[0]
        if picked.name in probes and not await self.store.lease(probes[picked.name], owner, now, self.lease_seconds):
            if healthy:
                return healthy[0] if len(healthy) == 1 else random.choices(healthy, [d.weight for d in healthy])[0]
            return picked
        return picked

    async def report(self, provider: str, deployment: str | None, model: str, error: BaseException | None) -> None:
        """Record the outcome of one attempt: ``error`` None is a success."""
        key = (provider, deployment, model)
        if error is None:
            if not self.shared or key in self._troubled:
                self._troubled.discard(key)
                await self.store.clear(key)
            return
        retry_after = getattr(error, "retry_after", None) or 0.0
        self._troubled.add(key)
        await self.store.fail(key, self.allowed_fails, self.clock() + max(self.cooldown_seconds, retry_after))


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
    request's own credentials still win over the configured keys). A stream is healthy at its first
    token (the endpoint's ``first_token``; its first chunk without one): a stream that sends its
    headers and then nothing is a failure like a silent provider.
    """

    def __init__(self, pool: DeploymentPool, first_token: dict[str, Callable[[Chunk], bool]] | None = None) -> None:
        self.pool = pool
        self.first_token = first_token or {}
        # Reports made while a cancellation unwinds run as tasks (kept here until done).
        self._reports: set[asyncio.Task[None]] = set()

    async def __call__(self, call: Call, call_next: CallNext) -> Result:
        target = call.target
        if target is None:
            return await call_next(call)
        chosen = await self.pool.choose(target, call.request_id)
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
                await self.pool.report(provider, name, model, exc if is_deployment_fault(exc) else None)
            raise
        except BaseException:
            # Cancelled before an answer: reliability's first-byte or total timeout ran out.
            if self._ours(call.target, chosen):
                self._report_later(provider, name, model, _TIMED_OUT)
            raise
        if not self._ours(call.target, chosen):
            return result
        if isinstance(result, StreamResult):
            result.chunks = self._watch(result.chunks, provider, name, model, self.first_token.get(call.kind))
        else:
            await self.pool.report(provider, name, model, None)
        return result

    def _report_later(self, provider: str, name: str | None, model: str, error: BaseException | None) -> None:
        task = asyncio.ensure_future(self.pool.report(provider, name, model, error))
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    @staticmethod
    def _ours(target: Target | None, chosen: Deployment | None) -> bool:
        """False when a later stage (the request's own credentials) replaced the key or endpoint."""
        if target is None:
            return False
        if chosen is None:
            return not target.api_key and not target.base_url
        return (target.deployment == chosen.name and (target.api_key or "") == chosen.api_key
                and (not chosen.base_url or target.base_url == chosen.base_url))

    async def _watch(self, chunks: AsyncIterator[Chunk], provider: str, name: str | None, model: str,
                     first_token: Callable[[Chunk], bool] | None) -> AsyncIterator[Chunk]:
        """Report the stream's health: success at its first token, failure if it breaks before that."""
        started = False
        try:
            async for chunk in chunks:
                if not started and (first_token is None or first_token(chunk)):
                    started = True
                    await self.pool.report(provider, name, model, None)
                yield chunk
        except GatewayError as exc:
            if is_deployment_fault(exc):
                await self.pool.report(provider, name, model, exc)
            raise
        except BaseException as exc:
            # Before the first token a cancellation is reliability's timeout; after it, the client left.
            if not started and not isinstance(exc, GeneratorExit):
                self._report_later(provider, name, model, _TIMED_OUT)
            raise
        finally:
            await aclose(chunks)


_TIMED_OUT = UpstreamError("the attempt timed out", status=504)
