"""Which limits apply to a call, and what they are called in ``limit_info``.

Two scopes (SPEC section 7): the gateway API key (``call.principal.limits``, a
:class:`respan_gateway.KeyLimits`) and the customer (its stored record merged with the call's
``customer_params``). Each limit is one counter in one window; see README.md for the table.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import msgspec

from respan_gateway import KeyLimits
from respan_gateway.timestamps import parse_iso

from .counters import Window, WindowKind, window

Metric = Literal["spend", "requests", "tokens"]
Scope = Literal["customer", "key"]

#: budget_duration -> window kind.
DURATIONS: dict[str, WindowKind] = {"daily": "day", "weekly": "week", "monthly": "month", "yearly": "year"}

#: KeyLimits field -> (metric, window kind).
KEY_LIMITS: dict[str, tuple[Metric, WindowKind]] = {
    "max_spend": ("spend", "lifetime"),
    "spend_per_hour": ("spend", "hour"), "spend_per_day": ("spend", "day"), "spend_per_month": ("spend", "month"),
    "requests_per_minute": ("requests", "minute"), "requests_per_hour": ("requests", "hour"),
    "requests_per_day": ("requests", "day"), "requests_per_month": ("requests", "month"),
    "tokens_per_hour": ("tokens", "hour"), "tokens_per_day": ("tokens", "day"), "tokens_per_month": ("tokens", "month"),
}
assert set(KEY_LIMITS) == set(KeyLimits.__struct_fields__), "every KeyLimits field is enforced"


class Applied(msgspec.Struct, kw_only=True):
    """One limit (or a tracked counter without a limit) that applies to a call."""

    name: str  # in limit_info: customer_budget, key_requests_per_minute...
    scope: Scope
    subject: str  # the customer identifier or the key id
    metric: Metric
    kind: str  # the window's kind, part of the key (``period`` for a customer's budget period)
    window: Window
    limit: float | None = None
    seed: float | None = None


def _date(value: Any, name: str, *, end: bool = False) -> float:
    """Epoch seconds of an ISO 8601 date or date-time; a date-only end means the end of that day."""
    text = str(value).strip()
    epoch = parse_iso(text)  # ValueError names nothing: the caller does
    if end and len(text) == 10:
        epoch += 86400
    return epoch


def customer_period(fields: dict[str, Any], now: float) -> Window | None:
    """The customer's current budget period: ``budget_duration`` (recurring from ``period_start`` when
    given, else aligned in UTC), else ``period_start``..``period_end`` recurring with that length,
    else monthly when only ``period_budget`` is set; None when the customer has no period."""
    start = fields.get("period_start")
    anchor = _date(start, "period_start") if start else None
    duration = fields.get("budget_duration")
    if duration in DURATIONS:
        return window(DURATIONS[duration], now, anchor)
    end = fields.get("period_end")
    if anchor is not None and end:
        length = _date(end, "period_end", end=True) - anchor
        if length > 0:
            return window("day", now, anchor, length)
    if fields.get("period_budget") is not None:
        return window("month", now, anchor)
    return None


def check_dates(fields: dict[str, Any]) -> str | None:
    """The name of a period field that is not an ISO 8601 date, or None."""
    for name in ("period_start", "period_end"):
        value = fields.get(name)
        if value is not None:
            try:
                _date(value, name)
            except (ValueError, TypeError):
                return name
    return None


def customer_limits(identifier: str, fields: dict[str, Any], total_spend: float | None, now: float) -> list[Applied]:
    out = []
    period = customer_period(fields, now)
    if period is not None:  # counted even without a period budget: the users API shows the period's usage
        out.append(Applied(name="customer_budget", scope="customer", subject=identifier, metric="spend", kind="period",
                           window=period, limit=fields.get("period_budget")))
    if fields.get("total_budget") is not None:
        out.append(Applied(name="customer_total_budget", scope="customer", subject=identifier, metric="spend",
                           kind="lifetime", window=window("lifetime", now), limit=fields["total_budget"], seed=total_spend))
    if fields.get("rate_limit") is not None:
        out.append(Applied(name="customer_rate_limit", scope="customer", subject=identifier, metric="requests",
                           kind="minute", window=window("minute", now), limit=float(fields["rate_limit"])))
    return out


def key_limits(key_id: str, limits: KeyLimits, spend: float | None, now: float) -> list[Applied]:
    out = []
    for field, (metric, kind) in KEY_LIMITS.items():
        value = getattr(limits, field)
        if value is None:
            continue
        out.append(Applied(name=f"key_{field}", scope="key", subject=key_id, metric=metric, kind=kind,
                           window=window(kind, now), limit=float(value), seed=spend if kind == "lifetime" else None))
    return out


PERIOD_WORDS = {"minute": "minute", "hour": "hour", "day": "day", "week": "week", "month": "month", "year": "year",
                "period": "budget period", "lifetime": "lifetime"}


def describe(a: Applied, current: float, amount: float) -> str:
    """Why ``a`` blocks a call, for the 429's message."""
    who = f"customer `{a.subject}`" if a.scope == "customer" else f"API key `{a.subject}`"
    assert a.limit is not None
    if a.metric == "spend":
        what = "total budget" if a.kind == "lifetime" else ("budget" if a.kind == "period" else f"spend limit per {PERIOD_WORDS[a.kind]}")
        return (f"{who} has used ${current:.6g} of its ${a.limit:.6g} {what} ({a.name}): not enough for this "
                f"request (estimated ${amount:.6g})")
    if a.metric == "requests":
        return f"{who} reached its limit of {a.limit:g} requests per {PERIOD_WORDS[a.kind]} ({a.name})"
    return (f"{who} has used {current:g} of its {a.limit:g} tokens per {PERIOD_WORDS[a.kind]} ({a.name}): not enough "
            f"for this request (up to {amount:g} tokens)")


def iso_date(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat().replace("+00:00", "Z")


__all__ = ["Applied", "KEY_LIMITS", "check_dates", "customer_limits", "customer_period", "describe", "key_limits"]
