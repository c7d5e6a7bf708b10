"""The users API (customers), scoped to the caller's tenant, and the :class:`CustomerReader` service:

``GET|POST       /api/users/list/``                     customers with their usage totals, paged and sorted
``GET            /api/users/{customer_identifier}/``     one customer
``PATCH          /api/users/{customer_identifier}/``     change its profile and budgets (``null`` clears a field); creates it when new
``DELETE         /api/users/{customer_identifier}/``     remove it, its usage totals and its counters

Reads in one process see every call this process has settled (pending writes are flushed first).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from respan_gateway import BadRequest, GatewayError, NotFound, json_body
from respan_gateway.config import describe_validation_error
from respan_gateway.database import StoreUnavailable
from respan_gateway.params import MAX_IDENTIFIER_LENGTH, Amount, Count, Finite

from .middleware import Limits
from .policy import Applied, check_dates, customer_limits, customer_period, iso_date
from .store import CUSTOMER_FIELDS, SORTS, CustomerStore

_encode = msgspec.json.Encoder().encode
MAX_PAGE_SIZE = 1000
UNSET = msgspec.UNSET
Unset = msgspec.UnsetType


class CustomerPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What a PATCH may change; a field left out stays, ``null`` clears it."""

    email: str | None | Unset = UNSET
    name: str | None | Unset = UNSET
    group_identifier: str | None | Unset = UNSET
    metadata: dict[str, Any] | None | Unset = UNSET
    period_budget: Amount | None | Unset = UNSET
    budget_duration: Literal["daily", "weekly", "monthly", "yearly"] | None | Unset = UNSET
    period_start: str | None | Unset = UNSET
    period_end: str | None | Unset = UNSET
    total_budget: Amount | None | Unset = UNSET
    markup_percentage: Finite | None | Unset = UNSET
    rate_limit: Count | None | Unset = UNSET


class StoreDown(GatewayError):
    status = 503
    type = "server_error"
    code = "store_unavailable"


class CustomerDirectory:
    """The ``CustomerReader`` service (hookspecs.py), and the writes of the users API."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    @property
    def store(self) -> CustomerStore:
        store = self.limits.customers.store
        if store is None:
            raise StoreUnavailable("the customers store is not started")
        return store

    async def get(self, tenant: str, customer_identifier: str) -> dict[str, Any] | None:
        await self.limits.writer.flush()
        row = await self.store.get(tenant, customer_identifier[:MAX_IDENTIFIER_LENGTH])
        return (await self._records(tenant, [row]))[0] if row is not None else None

    async def list(self, tenant: str, *, page: int = 1, page_size: int = 100,
                   sort_by: str = "-last_active_timeframe") -> tuple[int, list[dict[str, Any]]]:
        await self.limits.writer.flush()
        try:
            count, rows = await self.store.list(tenant, page, page_size, sort_by)
        except ValueError as exc:
            raise BadRequest(str(exc), param="sort_by") from None
        return count, await self._records(tenant, rows)

    async def patch(self, tenant: str, customer_identifier: str, patch: CustomerPatch) -> dict[str, Any]:
        identifier = customer_identifier[:MAX_IDENTIFIER_LENGTH]
        await self.limits.writer.flush()  # calls' pending upserts first: the PATCH is the last word
        row = await self.store.get(tenant, identifier) or {}
        fields = {name: row.get(name) for name in CUSTOMER_FIELDS}
        for name in CUSTOMER_FIELDS:
            value = getattr(patch, name)
            if value is not UNSET:
                fields[name] = value
        bad = check_dates(fields)
        if bad:
            raise BadRequest(f"`{bad}` must be an ISO 8601 date (YYYY-MM-DD)", param=bad)
        await self.store.replace(tenant, identifier, fields)
        self.limits.customers.forget(tenant, identifier)
        record = await self.get(tenant, identifier)
        assert record is not None
        return record

    async def delete(self, tenant: str, customer_identifier: str) -> bool:
        identifier = customer_identifier[:MAX_IDENTIFIER_LENGTH]
        await self.limits.writer.flush()
        row = await self.store.get(tenant, identifier)
        if row is None:
            return False
        await self.store.delete(tenant, identifier)
        self.limits.customers.forget(tenant, identifier)
        applied = customer_limits(identifier, {**row, "total_budget": row.get("total_budget") or 0,
                                               "rate_limit": row.get("rate_limit") or 0}, None, self.limits.clock.now())
        try:  # the counters start again from zero should the customer come back
            await self.limits.counters.delete([self.limits.key(tenant, a) for a in applied])
        except self.limits._errors:
            pass
        return True

    async def _records(self, tenant: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        now = self.limits.clock.now()
        periods = [customer_period(row, now) for row in rows]
        keys = [self.limits.key(tenant, Applied(name="customer_budget", scope="customer", subject=row["customer_identifier"],
                                               metric="spend", kind="period", window=period))
                for row, period in zip(rows, periods) if period is not None]
        try:
            values = iter(await self.limits.counters.values(keys))
        except self.limits._errors:
            values = iter([None] * len(keys))
        return [_record(row, period, next(values) if period is not None else None) for row, period in zip(rows, periods)]


def _record(row: dict[str, Any], period: Any, period_usage: float | None) -> dict[str, Any]:
    prompt, completion = int(row.get("prompt_tokens") or 0), int(row.get("completion_tokens") or 0)
    requests = int(row.get("requests") or 0)
    return {
        "id": row["customer_identifier"],
        "customer_identifier": row["customer_identifier"],
        "email": row.get("email"),
        "name": row.get("name"),
        "group_identifier": row.get("group_identifier"),
        "metadata": row.get("metadata"),
        "period_budget": row.get("period_budget"),
        "budget_duration": row.get("budget_duration"),
        "total_budget": row.get("total_budget"),
        "markup_percentage": row.get("markup_percentage"),
        "rate_limit": row.get("rate_limit"),
        # The current period's bounds (the stored ones are in customer_params).
        "period_start": iso_date(period.start) if period is not None else None,
        "period_end": iso_date(period.end) if period is not None else None,
        "customer_params": {name: row.get(name) for name in ("period_budget", "budget_duration", "period_start",
                                                             "period_end", "total_budget", "markup_percentage", "rate_limit")},
        "total_period_usage": round(period_usage, 10) if period_usage is not None else (0.0 if period is not None else None),
        "total_usage": round(float(row.get("spend") or 0.0), 10),
        "total_cost": round(float(row.get("cost") or 0.0), 10),
        "total_requests": requests,
        "number_of_requests": requests,
        "total_prompt_tokens": prompt,
        "total_completion_tokens": completion,
        "total_tokens": prompt + completion,
        "first_seen": iso_date(row.get("first_seen") or row.get("created_at")),
        "last_active_timeframe": iso_date(row.get("last_active") or row.get("updated_at")),
        "created_at": iso_date(row.get("created_at")),
        "updated_at": iso_date(row.get("updated_at")),
    }


# -- the routes ---------------------------------------------------------------------------------------

def _json(status: int, body: Any) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json")


async def _context(request: Request) -> tuple[CustomerDirectory, str]:
    gateway = request.app.state.gateway
    principal = await gateway.authenticate(request.headers)
    limits = dict(gateway.middlewares).get("limits")
    if limits is None:
        raise NotFound("the users API needs the `limits` middleware in the pipeline")
    return limits.directory, principal.tenant


def _int(params: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name)
    try:
        number = default if value in (None, "") else int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not low <= number <= high:
        raise BadRequest(f"`{name}` must be an integer between {low} and {high}", param=name)
    return number


async def list_users(request: Request) -> Response:
    directory, tenant = await _context(request)
    params = {**dict(request.query_params), **(await json_body(request) if request.method == "POST" else {})}
    page = _int(params, "page", 1, 1, 1_000_000_000)
    page_size = _int(params, "page_size", 100, 1, MAX_PAGE_SIZE)
    sort_by = str(params.get("sort_by") or "-last_active_timeframe")
    if sort_by.lstrip("-+") not in SORTS:
        raise BadRequest(f"cannot sort by `{sort_by}` (known: {', '.join(sorted(SORTS))})", param="sort_by")
    try:
        count, results = await directory.list(tenant, page=page, page_size=page_size, sort_by=sort_by)
    except StoreUnavailable as exc:
        raise StoreDown(f"the customers store is unavailable: {exc}") from None
    base = str(request.url.replace(query=""))
    return _json(200, {
        "count": count,
        "next": f"{base}?page={page + 1}&page_size={page_size}" if page * page_size < count else None,
        "previous": f"{base}?page={page - 1}&page_size={page_size}" if page > 1 else None,
        "results": results,
    })


async def one_user(request: Request) -> Response:
    directory, tenant = await _context(request)
    identifier = request.path_params["customer_identifier"]
    try:
        if request.method == "GET":
            record = await directory.get(tenant, identifier)
            if record is None:
                raise NotFound(f"no customer `{identifier[:MAX_IDENTIFIER_LENGTH]}`")
            return _json(200, record)
        if request.method == "DELETE":
            if not await directory.delete(tenant, identifier):
                raise NotFound(f"no customer `{identifier[:MAX_IDENTIFIER_LENGTH]}`")
            return Response(status_code=204)
        body = await json_body(request)
        nested = body.pop("customer_params", None)  # the budget fields may come as on a call, nested
        if nested is not None:
            if not isinstance(nested, dict):
                raise BadRequest("`customer_params` must be an object", param="customer_params")
            body = {**{k: v for k, v in nested.items() if k != "customer_identifier"}, **body}
        body.pop("customer_identifier", None)
        try:
            patch = msgspec.convert(body, CustomerPatch)
        except msgspec.ValidationError as exc:
            text = describe_validation_error(exc)
            param = text[1:text.index("`", 1)] if text.startswith("`") else None
            raise BadRequest(f"invalid field {text}", param=param) from None
        return _json(200, await directory.patch(tenant, identifier, patch))
    except StoreUnavailable as exc:
        raise StoreDown(f"the customers store is unavailable: {exc}") from None


ROUTES = [
    ("/api/users/list/", list_users, ["GET", "POST"]),
    ("/api/users/list", list_users, ["GET", "POST"]),
    ("/api/users/{customer_identifier:path}/", one_user, ["GET", "PATCH", "DELETE"]),
    ("/api/users/{customer_identifier:path}", one_user, ["GET", "PATCH", "DELETE"]),
]


__all__ = ["CustomerDirectory", "CustomerPatch", "ROUTES"]
