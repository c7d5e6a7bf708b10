"""The ``[routing]`` and ``[deployments]`` sections.

Bounds are msgspec constraints where msgspec can name the key (``deployments.allowed_fails``:
expected ``int`` >= 1). What it cannot name is checked by the middlewares at start-up: the slugs
(they need the catalog) and the members of ``load_balance_groups.<id>`` (msgspec names an entry of a
table ``load_balance_groups[...]``, not by its id).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from respan_gateway import Settings

__all__ = ["RoutingSettings", "LoadBalanceGroupSettings", "LoadBalanceMember", "DeploymentsSettings"]


class LoadBalanceMember(Settings):
    model: str
    # > 0; checked by the routing middleware, whose message names the group.
    weight: float = 1.0


class LoadBalanceGroupSettings(Settings):
    models: list[LoadBalanceMember]


class RoutingSettings(Settings):
    # Fallbacks used when a request names none (a request's `fallback_models` replaces this list).
    fallback_models: list[str] = []
    # Per primary model slug: its own fallbacks, instead of `fallback_models` (a request's still win).
    fallbacks: dict[str, list[str]] = {}
    # Groups a request names in `load_balance_group.group_id`.
    load_balance_groups: dict[str, LoadBalanceGroupSettings] = {}


class DeploymentsSettings(Settings):
    # Consecutive failures after which a deployment is cooled down.
    allowed_fails: Annotated[int, msgspec.Meta(ge=1)] = 3
    # How long a cooled-down deployment is skipped (at least the provider's Retry-After).
    cooldown_seconds: Annotated[float, msgspec.Meta(ge=0)] = 30.0
