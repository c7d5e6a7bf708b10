"""Routing: which models (and which deployments of their providers) a request may be sent to, in order.

Middleware ``routing`` (order 700) turns the request into ``call.candidates``, an ordered list of
targets: the primary first, then the fallbacks. It reads ``model``, ``models``,
``load_balance_group`` / ``load_balance_models`` / ``loadbalance_models``, ``fallback_models`` (or
the config's default list), ``disable_fallback``, ``exclude_models`` / ``exclude_providers`` and the
``X-Respan-Route-Provider`` pin. Every slug is resolved before any upstream call, so an unknown one is
a 404. ``call.target`` is set to the primary, so without the reliability plugin the request simply
goes there; reliability walks the whole list (see :mod:`.candidates`).

Middleware ``deployments`` (order 850, after reliability) picks, for every attempt, one of the
provider's configured deployments (keys and endpoints, by weight) and cools down a deployment that
keeps failing (see :mod:`.deployments`); its ``[deployments]`` section holds the cooldown settings.
A candidate whose every deployment is cooling down moves to the end of routing's list, so traffic
goes to the fallbacks until it comes back; after the cooldown one request (the probe, holding a
lease) tries it first, the others keep to the fallbacks until the probe succeeded. With
``[state] redis_url`` that state is shared by every worker and replica.

How routing learns that health without a module global: the pool belongs to ``deployments``, which
builds it from its own settings; :func:`register_middlewares` runs once per gateway build and gives
both factories one fresh :class:`~.deployments.PoolSlot`, where ``deployments`` leaves its pool and
routing reads it per request. The pool cannot do the reordering itself: by the time ``deployments``
runs (once per attempt), reliability is already walking its own copy of the list. Without
``deployments`` in the pipeline the slot stays empty and routing keeps its order.

Modules: :mod:`.settings` (both sections), :mod:`.candidates` (the ordering rule and the ``routing``
middleware), :mod:`.deployments` (the pool, the cooldown and the ``deployments`` middleware).
See README.md for the rules and the config sections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from respan_gateway import hookimpl

from .candidates import RoutingMiddleware, plan
from .deployments import Deployment, DeploymentPool, DeploymentsMiddleware, PoolSlot
from .settings import DeploymentsSettings, RoutingSettings

if TYPE_CHECKING:
    from respan_gateway import Gateway
    from respan_gateway.hookspecs import RegisterMiddleware

__all__ = [
    "RoutingSettings", "RoutingMiddleware", "DeploymentsSettings", "DeploymentsMiddleware", "DeploymentPool",
    "Deployment", "PoolSlot", "plan",
]


@hookimpl
def register_middlewares(register: RegisterMiddleware) -> None:
    # Called once per gateway build: the slot is this gateway's, and nothing outlives it.
    slot = PoolSlot()

    def routing(settings: RoutingSettings, gateway: Gateway) -> RoutingMiddleware:
        return RoutingMiddleware(settings, gateway, slot)

    def deployments(settings: DeploymentsSettings, gateway: Gateway) -> DeploymentsMiddleware:
        slot.pool = DeploymentPool(gateway, settings)
        return DeploymentsMiddleware(slot.pool, {e.kind: e.first_token for e in gateway.endpoints if e.first_token is not None})

    register("routing", routing, order=700, settings=RoutingSettings)
    # Routing orders its candidates by this pool's health: `deployments` is meant to run with it.
    register("deployments", deployments, order=850, settings=DeploymentsSettings)
