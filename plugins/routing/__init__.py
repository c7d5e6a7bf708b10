"""Routing: which models (and which deployments of their providers) a request may be sent to, in order.

Middleware ``routing`` (order 700) turns the request into ``call.candidates``, an ordered list of
targets: the primary first, then the fallbacks. It reads ``model``, ``models``,
``load_balance_group`` / ``load_balance_models`` / ``loadbalance_models``, ``fallback_models`` (or
the config's default list), ``disable_fallback``, ``exclude_models`` / ``exclude_providers`` and the
``X-Respan-Route-Provider`` pin. Every slug is resolved before any upstream call, so an unknown one is
a 404. ``call.target`` is set to the primary, so without the reliability plugin the request simply
goes there; reliability walks the whole list.

Middleware ``deployments`` (order 850, after reliability) picks, for every attempt, one of the
provider's configured deployments (keys and endpoints, by weight) and cools down a deployment that
keeps failing (see :mod:`.deployments`). A candidate whose every deployment is cooling down moves
to the end of the list, so traffic goes to the fallbacks until it comes back.

See README.md for the rules and the ``[routing]`` config section.
"""

from __future__ import annotations

import random
import weakref
from typing import Any

import msgspec

from respan_gateway import BadRequest, Call, CallNext, ConfigError, GatewayError, NotFound, Result, Settings, Target, hookimpl
from respan_gateway.params import LoadBalanceModel

from .deployments import Deployment, DeploymentPool, DeploymentsMiddleware

__all__ = ["RoutingSettings", "RoutingMiddleware", "DeploymentPool", "Deployment", "plan"]


class LoadBalanceMember(Settings):
    model: str
    weight: float = 1.0


class LoadBalanceGroupSettings(Settings):
    models: list[LoadBalanceMember]


class RoutingSettings(Settings):
    # Fallbacks used when a request names none (a request's `fallback_models` replaces this list).
    fallback_models: list[str] = []
    # Groups a request names in `load_balance_group.group_id`.
    load_balance_groups: dict[str, LoadBalanceGroupSettings] = {}
    # Consecutive failures after which a deployment is cooled down.
    allowed_fails: int = 3
    # How long a cooled-down deployment is skipped (at least the provider's Retry-After).
    cooldown_seconds: float = 30.0


# One pool per gateway, shared by the two middlewares of this plugin.
_pools: weakref.WeakKeyDictionary[Any, DeploymentPool] = weakref.WeakKeyDictionary()


def _pool(gateway: Any) -> DeploymentPool:
    pool = _pools.get(gateway)
    if pool is None:
        settings = gateway.config.section("routing", RoutingSettings)
        pool = _pools[gateway] = DeploymentPool(gateway, settings.allowed_fails, settings.cooldown_seconds)
    return pool


class RoutingMiddleware:
    def __init__(self, settings: RoutingSettings, gateway: Any) -> None:
        self.settings = settings
        self.catalog = gateway.catalog
        self.pool = _pool(gateway)
        source = gateway.config.source
        if settings.allowed_fails < 1:
            raise ConfigError(f"{source}: `routing.allowed_fails`: must be at least 1")
        if settings.cooldown_seconds < 0:
            raise ConfigError(f"{source}: `routing.cooldown_seconds`: must not be negative")
        # Fail at start-up, by name, on a slug no request could ever reach.
        for i, slug in enumerate(settings.fallback_models):
            self._check_slug(slug, f"routing.fallback_models[{i}]", source)
        for gid, group in settings.load_balance_groups.items():
            if not group.models:
                raise ConfigError(f"{source}: `routing.load_balance_groups.{gid}.models`: the group is empty")
            for i, member in enumerate(group.models):
                self._check_slug(member.model, f"routing.load_balance_groups.{gid}.models[{i}].model", source)
                if member.weight <= 0:
                    raise ConfigError(f"{source}: `routing.load_balance_groups.{gid}.models[{i}].weight`: must be greater than 0")

    def _check_slug(self, slug: str, key: str, source: str) -> None:
        try:
            self.catalog.resolve(slug)
        except GatewayError:
            raise ConfigError(f"{source}: `{key}`: unknown model `{slug}`") from None

    async def __call__(self, call: Call, call_next: CallNext) -> Result:
        candidates = plan(call, self.catalog, self.settings, self.pool)
        call.candidates = candidates
        call.target = msgspec.structs.replace(candidates[0])
        return await call_next(call)


def plan(call: Call, catalog: Any, settings: RoutingSettings, pool: DeploymentPool | None = None) -> list[Target]:
    """The ordered candidates of ``call``: routing choices, then fallbacks (see README.md)."""
    p = call.params
    excluded_models = set(p.exclude_models or ())
    excluded_providers = {x.strip().lower() for x in p.exclude_providers or ()}

    def excluded(t: Target) -> bool:
        return (
            t.provider.lower() in excluded_providers
            or t.model in excluded_models
            or t.upstream_model in excluded_models
            or f"{t.provider}/{t.upstream_model}" in excluded_models
        )

    members = _load_balance_members(p, settings)
    routed: list[Target]  # the router's choices: exclusions apply
    explicit: list[Target] = []  # the client's own choice of primary: exclusions do not apply
    if members is not None:
        resolved = [(catalog.resolve(m.model), m.weight) for m in members]
        kept = [(t, w) for t, w in resolved if not excluded(t)]
        routed = _weighted_order(kept)
    elif call.model:
        explicit = [catalog.resolve(call.model, p.route_provider_override)]
        routed = []
    elif p.models:
        routed = [t for t in (catalog.resolve(m) for m in p.models) if not excluded(t)]
    else:
        raise BadRequest("the request has no `model`: name one (or `models`, or a load_balance_group)", param="model")

    fallback_slugs = p.fallback_models if p.fallback_models is not None else settings.fallback_models
    fallbacks = [catalog.resolve(m) for m in fallback_slugs]
    # With a primary named by `model` or a group, `models` are extra fallbacks (after fallback_models).
    extra = [t for t in (catalog.resolve(m) for m in p.models or ()) if not excluded(t)] if members is not None or call.model else []

    ordered = _unique([*explicit, *routed, *fallbacks, *extra])
    if not ordered:
        raise BadRequest(
            "every candidate model is excluded by `exclude_models` / `exclude_providers`", param="exclude_models"
        )
    if p.disable_fallback:
        ordered = ordered[:1]
    elif pool is not None and len(ordered) > 1:
        # A candidate whose deployments are all cooling down goes last: traffic moves on until it recovers.
        ready = [t for t in ordered if pool.available(t)]
        if len(ready) != len(ordered):
            ordered = ready + [t for t in ordered if t not in ready]
    return ordered


def _load_balance_members(p: Any, settings: RoutingSettings) -> list[Any] | None:
    """The weighted members the request load-balances over, or None when it does not."""
    group = p.load_balance_group
    if group is not None:
        if group.models is not None:
            members: list[Any] = group.models
        else:
            configured = settings.load_balance_groups.get(group.group_id)
            if configured is None:
                raise NotFound(f"load balance group `{group.group_id}` is not configured", param="load_balance_group", code="load_balance_group_not_found")
            return configured.models
        param = "load_balance_group"
    elif p.load_balance_models is not None:
        members, param = p.load_balance_models, "load_balance_models"
    elif p.loadbalance_models is not None:
        members, param = p.loadbalance_models, "loadbalance_models"
    else:
        return None
    if not members:
        raise BadRequest(f"`{param}` has no models", param=param)
    for m in members:
        if not isinstance(m, LoadBalanceModel) or m.weight <= 0:
            raise BadRequest(f"`{param}`: every model needs a weight greater than 0", param=param)
    return members


def _weighted_order(items: list[tuple[Target, float]]) -> list[Target]:
    """A random order in which each next item is drawn by weight among those left (Efraimidis-Spirakis)."""
    if len(items) <= 1:
        return [t for t, _ in items]
    keyed = [(random.random() ** (1.0 / w), i) for i, (_, w) in enumerate(items)]
    keyed.sort(reverse=True)
    return [items[i][0] for _, i in keyed]


def _unique(targets: list[Target]) -> list[Target]:
    seen: set[tuple[str, str]] = set()
    out = []
    for t in targets:
        key = (t.provider, t.upstream_model)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def _deployments_factory(settings: Any, gateway: Any) -> DeploymentsMiddleware:
    return DeploymentsMiddleware(_pool(gateway))


@hookimpl
def register_middlewares(register: Any) -> None:
    register("routing", RoutingMiddleware, order=700, settings=RoutingSettings)
    register("deployments", _deployments_factory, order=850)
