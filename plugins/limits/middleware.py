"""The check (a middleware, before the upstream call) and the settle (an observer, after it).

Per call with at least one applicable limit: one step on the counters (one Redis round trip, or none
in the process) reserves the call's estimate on every counter, or refuses it with a 429. When the
call has ended, the observer adjusts each counter by what the call really cost minus what was
reserved. Calls without limits cost a dict lookup or two.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog

from respan_gateway import Call, CallNext, Gateway, GatewayError, RateLimited, Result, tokens
from respan_gateway.cost import Usage
from respan_gateway.cost import cost as price
from respan_gateway.errors import BadRequest

from .counters import Clock, Counter, CounterStore, MemoryCounters, RedisCounters, ttl_of
from .customers import CustomerCache
from .policy import Applied, check_dates, customer_limits, describe, key_limits
from .settings import LimitsSettings
from .store import CustomerStore, UsageWriter
from .warnings import Warnings

if TYPE_CHECKING:
    from respan_gateway.state import SharedState

log = structlog.get_logger("respan_gateway.limits")

#: Where the middleware leaves its reservation for the observer (the plugin's own note on the call).
RESERVATION = "respan_limits.reservation"


def _redis_errors(state: SharedState) -> tuple[type[BaseException], ...]:
    if not state.shared:
        return state.unavailable  # the in-process counters: redis is not even imported
    from redis.exceptions import RedisError

    return (*state.unavailable, RedisError)


class LimitsUnavailable(GatewayError):
    """503: the shared counters cannot be reached and ``on_redis_unavailable = "closed"``."""

    status = 503
    type = "server_error"
    code = "limits_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"retry-after": "1"})


class Reservation:
    __slots__ = ("applied", "amounts", "markup", "cost", "tokens")

    def __init__(self, applied: list[Applied], amounts: list[float], markup: float, cost: float, tokens: int) -> None:
        self.applied, self.amounts, self.markup, self.cost, self.tokens = applied, amounts, markup, cost, tokens


class Limits:
    """The ``limits`` middleware (and the plugin's state: counters, customers, clock)."""

    def __init__(self, settings: LimitsSettings, gateway: Gateway) -> None:
        self.settings = settings
        self.gateway = gateway
        self.clock = Clock()
        self.shared = gateway.state.shared
        self.counters: CounterStore = RedisCounters(gateway.state) if self.shared else MemoryCounters(self.clock)
        self.writer = UsageWriter(settings.flush_interval)
        self.customers = CustomerCache(settings.customer_cache_ttl, settings.customer_cache_size, self.writer)
        self.endpoints = {e.kind: e for e in gateway.endpoints}
        self.warnings = Warnings(settings, gateway)
        self._errors = _redis_errors(gateway.state)
        m = gateway.metrics
        self.checks = m.counter("respan_gateway_limit_checks_total",
                                "Calls checked against limits, by result (allowed, blocked, unavailable_refused, unavailable_allowed).",
                                ("result",))
        self.blocked = m.counter("respan_gateway_limit_blocked_total", "Calls refused with a 429, by the limit that refused them.", ("limit",))
        self.settle_failures = m.counter("respan_gateway_limit_settle_failures_total",
                                         "Settlements lost because the counters could not be reached.")
        m.gauge("respan_gateway_limit_pending_writes", "Customer upserts and usage totals not yet written to the database.",
                source=lambda: len(self.writer.upserts) + len(self.writer.deltas))
        self._tasks: set[asyncio.Task[None]] = set()
        self.directory: Any = None  # the users API's CustomerDirectory (set by the plugin's factory)
        self.observed = 0  # calls the observer has seen (a test waits for its call's settle with drain())

    # -- life cycle -----------------------------------------------------------------------------
    async def startup(self) -> None:
        if self.gateway.database is None:
            raise RuntimeError("the limits plugin needs the gateway's database (register_stores did not run)")
        store = CustomerStore(self.gateway.database)
        self.customers.store = store
        self.writer.start(store)

    async def drain(self, timeout: float = 5) -> None:
        """Wait for the settlements in flight (Redis): at shutdown, and in tests."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def shutdown(self) -> None:
        await self.drain()
        await self.warnings.close()
        await self.writer.close()

    # -- the check ------------------------------------------------------------------------------
    async def __call__(self, call: Call, call_next: CallNext) -> Result:
        # No customer and a key without limits (the plain request): nothing applies, nothing to read.
        if call.rejection is not None or (call.outcome.customer is None and call.principal.limits is None):
            return await call_next(call)
        applied, markup = await self.applicable(call)
        if not applied:
            return await call_next(call)
        now = self.clock.now()
        cost, tokens_needed = self.estimate(call)
        amounts = [self._amount(a, cost, tokens_needed, markup) for a in applied]
        counters = [Counter(key=self.key(call.principal.tenant, a), amount=amount, limit=a.limit, ttl=ttl_of(a.window, now), seed=a.seed)
                    for a, amount in zip(applied, amounts)]
        try:
            allowed, current = await self.counters.reserve(counters)
        except self._errors as exc:
            return await self._unavailable(call, call_next, exc)
        limits = []
        blocking: list[int] = []
        for i, (a, value, amount) in enumerate(zip(applied, current, amounts)):
            if a.limit is None:
                continue
            within = not (value >= a.limit or value + amount > a.limit)
            if not within:
                blocking.append(i)
            limits.append({"name": a.name, "current_value": _round(value), "new_value": _round(value + amount),
                           "limit_value": a.limit, "is_within_limit": within})
        call.outcome.limits = {"is_allowed": allowed, "limits": limits}
        if not allowed:
            self.checks.inc(("blocked",))
            first = applied[blocking[0]]
            for i in blocking:
                self.blocked.inc((applied[i].name,))
            ends = [applied[i].window.end for i in blocking]
            retry_after = None if any(e is None for e in ends) else max(0.0, max(e for e in ends if e is not None) - now)
            raise RateLimited(describe(first, current[blocking[0]], amounts[blocking[0]]),
                              retry_after=round(retry_after, 3) if retry_after is not None else None,
                              code="budget_exceeded" if first.metric == "spend" else "rate_limit_exceeded")
        self.checks.inc(("allowed",))
        call.state[RESERVATION] = Reservation(applied, amounts, markup, cost, tokens_needed)
        self.warnings.check(call.principal.tenant, applied, current, amounts)
        return await call_next(call)

    async def _unavailable(self, call: Call, call_next: CallNext, exc: BaseException) -> Result:
        log.warning("limits_redis_unavailable", error=f"{type(exc).__name__}: {exc}", request_id=call.request_id,
                    action="refused" if self.settings.on_redis_unavailable == "closed" else "allowed unchecked")
        if self.settings.on_redis_unavailable == "closed":
            self.checks.inc(("unavailable_refused",))
            raise LimitsUnavailable(
                "the gateway cannot check this request's limits: the shared counters (Redis) are unreachable "
                "([limits] on_redis_unavailable = \"closed\"); retry shortly")
        self.checks.inc(("unavailable_allowed",))
        call.outcome.limits = {"is_allowed": True, "limits": [], "unchecked": "the shared counters (Redis) were unreachable"}
        return await call_next(call)

    async def applicable(self, call: Call) -> tuple[list[Applied], float]:
        """The limits of this call (its key's, its customer's) and the customer's markup (percent)."""
        applied: list[Applied] = []
        markup = 0.0
        now = self.clock.now()
        principal = call.principal
        customer = call.outcome.customer
        if customer is not None:
            params = call.params.customer_params
            if params is not None:
                bad = check_dates({"period_start": params.period_start, "period_end": params.period_end})
                if bad:
                    raise BadRequest(f"invalid Respan param `customer_params.{bad}`: expected an ISO 8601 date (YYYY-MM-DD)",
                                     param=f"customer_params.{bad}")
            entry = await self.customers.resolve(principal.tenant, customer, params)
            applied += customer_limits(customer.identifier, entry.fields, entry.spend, now)
            markup = float(entry.fields.get("markup_percentage") or 0.0)
        if principal.limits is not None and principal.key_id is not None:
            spend = await self.customers.key_spend(principal.tenant, principal.key_id) if principal.limits.max_spend is not None else None
            applied += key_limits(principal.key_id, principal.limits, spend, now)
        return applied, markup

    def estimate(self, call: Call) -> tuple[float, int]:
        """This call's cost (USD at catalog prices) and tokens at most: the prompt's tokens (a cheap
        bound, UTF-8 bytes/4 per text: the reservation is settled with the real usage afterwards, so no
        vocabulary is loaded for it) and the completion's bound (its max tokens, else ``default_max_tokens``)."""
        prompt_tokens = tokens.estimate(call.prompt(), None, tokens.quick).prompt_tokens
        endpoint = self.endpoints.get(call.kind)
        completion = endpoint.max_output_tokens(call) if endpoint is not None else None
        entry = self.gateway.catalog.entry(call.model) if call.model else None
        if completion is None:
            completion = self.settings.default_max_tokens
            if entry is not None and entry.max_output_tokens:
                completion = min(completion, entry.max_output_tokens)
        choices = call.get("n") if "n" in call.body else None
        if isinstance(choices, int) and not isinstance(choices, bool) and choices > 1:
            completion *= choices
        p = call.params
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion)
        return price(entry, usage, prompt_unit_price=p.prompt_unit_price, completion_unit_price=p.completion_unit_price), \
            prompt_tokens + completion

    @staticmethod
    def _amount(a: Applied, cost: float, tokens_needed: int, markup: float) -> float:
        if a.metric == "requests":
            return 1.0
        if a.metric == "tokens":
            return float(tokens_needed)
        return cost * (1 + markup / 100) if a.scope == "customer" else cost

    def key(self, tenant: str, a: Applied) -> str:
        """The counter's key: ``<prefix>limits:<tenant>:<scope>:<subject>:<metric>:<window kind>:<window id>``."""
        return self.gateway.state.key("limits", tenant, a.scope, a.subject, a.metric, a.kind, a.window.id)

    # -- the settle -----------------------------------------------------------------------------
    def settle(self, call: Call) -> None:
        """Adjust the counters by what the call cost, and queue its usage totals (the observer)."""
        self.observed += 1
        outcome = call.outcome
        reservation: Reservation | None = call.state.pop(RESERVATION, None)
        if outcome.limits is not None and outcome.limits.get("is_allowed") is False:
            return  # refused here: it used nothing
        usage = outcome.usage
        answered = outcome.stream_end is not None or any(a.error is None and (a.status or 0) < 400 for a in call.attempts)
        if outcome.cache_hit:
            cost, spent_tokens, prompt_tokens, completion_tokens = 0.0, 0, 0, 0
        elif usage is not None:
            cost, spent_tokens = outcome.cost, usage.total_tokens
            prompt_tokens, completion_tokens = usage.prompt_tokens, usage.completion_tokens
        elif answered and reservation is not None:  # answered, usage unknown: what was reserved stays
            cost, spent_tokens, prompt_tokens, completion_tokens = reservation.cost, reservation.tokens, 0, 0
        else:  # failed before any answer: nothing spent
            cost, spent_tokens, prompt_tokens, completion_tokens = 0.0, 0, 0, 0
        tenant = call.principal.tenant
        markup = reservation.markup if reservation is not None else None
        customer = outcome.customer
        if customer is not None:
            if markup is None:
                markup = self.customers.markup(tenant, customer.identifier)
            self.writer.add(tenant, "customer", customer.identifier, cost * (1 + markup / 100), cost, 1,
                            prompt_tokens, completion_tokens)
        if call.principal.key_id is not None:
            self.writer.add(tenant, "key", call.principal.key_id, cost, cost, 1, prompt_tokens, completion_tokens)
        if reservation is None:
            return
        adjustments = []
        for a, amount in zip(reservation.applied, reservation.amounts):
            if a.metric == "requests":
                continue
            real = float(spent_tokens) if a.metric == "tokens" else (
                cost * (1 + reservation.markup / 100) if a.scope == "customer" else cost)
            if real != amount:
                adjustments.append((self.key(tenant, a), real - amount))
        if not adjustments:
            return
        if isinstance(self.counters, MemoryCounters):
            self.counters.adjust(adjustments)
            return
        task = asyncio.get_running_loop().create_task(self._settle(adjustments, call.request_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, adjustments: list[tuple[str, float]], request_id: str) -> None:
        try:
            await self.counters.settle(adjustments)
        except self._errors as exc:
            self.settle_failures.inc()
            log.warning("limits_settle_failed", error=f"{type(exc).__name__}: {exc}", request_id=request_id)


def _round(value: float) -> float:
    return round(value, 10)


class Settle:
    """The ``limits_settle`` observer: hands each finished call to the middleware's :meth:`Limits.settle`."""

    def __init__(self, settings: Any, gateway: Gateway) -> None:
        self.limits: Limits | None = dict(gateway.middlewares).get("limits")

    def observe(self, call: Call) -> None:
        if self.limits is not None:
            self.limits.settle(call)


__all__ = ["Limits", "LimitsUnavailable", "RESERVATION", "Settle"]
