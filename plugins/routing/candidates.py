"""The ordered candidates of a request: the routing choice, then the fallbacks.

:func:`plan` is the whole rule (see README.md); :class:`RoutingMiddleware` puts its answer on
``call.candidates`` and the primary on ``call.target``. A candidate whose every deployment is
cooling down goes last; that health is the ``deployments`` middleware's pool, handed over by the
plugin (see the package docstring), and absent when ``deployments`` is not in the pipeline.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from respan_gateway import BadRequest, Call, CallNext, ConfigError, GatewayError, NotFound, RespanParams, Result, Target
from respan_gateway.params import LoadBalanceModel

from .deployments import PoolSlot
from .settings import LoadBalanceMember, RoutingSettings

if TYPE_CHECKING:
    from respan_gateway import Gateway
    from respan_gateway.providers import Catalog

    from .deployments import DeploymentPool

__all__ = ["RoutingMiddleware", "by_health", "plan"]


class RoutingMiddleware:
    def __init__(self, settings: RoutingSettings, gateway: Gateway, slot: PoolSlot | None = None) -> None:
        self.settings = settings
        self.catalog = gateway.catalog
        # Empty until (and unless) the `deployments` middleware of this gateway is built.
        self.slot = slot if slot is not None else PoolSlot()
        source = gateway.config.source
        # Fail at start-up, by name, on a slug no request could ever reach.
        for i, slug in enumerate(settings.fallback_models):
            self._check_slug(slug, f"routing.fallback_models[{i}]", source)
        for primary, slugs in settings.fallbacks.items():
            self._check_slug(primary, f"routing.fallbacks.{primary}", source)
            for i, slug in enumerate(slugs):
                self._check_slug(slug, f"routing.fallbacks.{primary}[{i}]", source)
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
        candidates = plan(call, self.catalog, self.settings)
        pool = self.slot.pool
        if pool is not None and len(candidates) > 1:
            candidates = await by_health(call, candidates, pool)
        call.candidates = candidates
        call.target = msgspec.structs.replace(candidates[0])
        return await call_next(call)


async def by_health(call: Call, candidates: list[Target], pool: DeploymentPool) -> list[Target]:
    """The candidates with those whose every deployment is cooling down moved last, in order.

    A half-open candidate comes first only for the request that took its probe lease, and only when
    no candidate before it is healthy: the others keep to the fallbacks until the probe succeeded."""
    readiness = await pool.readiness(candidates, call.request_id)
    ready = [t for t, r in zip(candidates, readiness) if r != "cooling"]
    if not ready or len(ready) == len(candidates):
        return candidates
    return ready + [t for t, r in zip(candidates, readiness) if r == "cooling"]


def plan(call: Call, catalog: Catalog, settings: RoutingSettings) -> list[Target]:
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

    primary = (explicit or routed)[0].model if explicit or routed else None
    if p.fallback_models is not None:
        fallback_slugs = p.fallback_models
    else:  # the primary's own list, else the config's default
        fallback_slugs = settings.fallbacks.get(primary, settings.fallback_models) if primary else settings.fallback_models
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
    return ordered


def _load_balance_members(
    p: RespanParams, settings: RoutingSettings
) -> Sequence[LoadBalanceModel | LoadBalanceMember] | None:
    """The weighted members the request load-balances over, or None when it does not."""
    group = p.load_balance_group
    members: Sequence[LoadBalanceModel | LoadBalanceMember]
    if group is not None:
        if group.models is not None:
            members = group.models
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
