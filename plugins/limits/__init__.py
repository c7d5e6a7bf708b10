"""Limits: budgets and rate limits of customers and gateway API keys, exact across replicas; customers
and the users API.

A middleware (default order 400, after auth and params) checks every applicable limit before the
upstream call against an estimate of the call's cost, reserving it on shared counters (Redis, one Lua
script) or in-process ones (the embedded default); an observer (``limits_settle``) settles the real
cost when the call has ended. Customers live in the gateway's database (store ``customers``). See
README.md beside this file for what each limit counts, when it is checked, and the overshoot bound.
"""

from __future__ import annotations

from respan_gateway import Gateway, hookimpl
from respan_gateway.hookspecs import CustomerReader, RegisterMiddleware, RegisterObserver, RegisterRoute, RegisterStore

from .api import ROUTES, CustomerDirectory
from .counters import Clock, MemoryCounters, RedisCounters, window
from .middleware import Limits, LimitsUnavailable, Settle
from .settings import LimitsSettings
from .store import MIGRATIONS


def make_limits(settings: LimitsSettings, gateway: Gateway) -> Limits:
    limits = Limits(settings, gateway)
    limits.directory = CustomerDirectory(limits)
    # Read-only access to customers and their usage for other plugins (the dashboard): hookspecs.CustomerReader.
    gateway.provide(CustomerReader, limits.directory)
    return limits


@hookimpl
def register_middlewares(register: RegisterMiddleware) -> None:
    # After auth (the key's limits) and params (the customer); before prompts, cache and routing. What it
    # reserves only the observer settles: the check never runs without it.
    register("limits", make_limits, order=400, settings=LimitsSettings, requires=("limits_settle",))


@hookimpl
def register_observers(register: RegisterObserver) -> None:
    # Settles what the middleware reserved. Without the middleware (a `[plugins] pipeline` that leaves
    # `limits` out) it has nothing to settle and does nothing, so it does not require it.
    register("limits_settle", Settle)


@hookimpl
def register_routes(register: RegisterRoute) -> None:
    for path, endpoint, methods in ROUTES:
        register(path, endpoint, methods=methods)


@hookimpl
def register_stores(register: RegisterStore) -> None:
    register("customers", MIGRATIONS)


__all__ = ["Clock", "CustomerDirectory", "Limits", "LimitsSettings", "LimitsUnavailable", "MemoryCounters",
           "RedisCounters", "Settle", "window"]
