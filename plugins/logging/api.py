"""The logs API (SPEC section 8), scoped to the caller's tenant:

``POST|GET /api/request-logs/list/``     filters, operators, paging, sorting
``POST|GET /api/request-logs/summary/``  totals of cost, tokens, requests, errors
``GET      /api/request-logs/{id}/``     one record
``PATCH    /api/request-logs/{id}/``     ``metadata`` (merged), ``positive_feedback``, ``note``

Reads within one process see every record this process has answered (the queue is flushed first);
records of other replicas appear within their ``flush_interval``.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from respan_gateway import BadRequest, GatewayError, NotFound, json_body
from respan_gateway.database import StoreUnavailable
from respan_gateway.hookspecs import LogQuery, RequestLogReader
from respan_gateway.params import coerce_metadata

from .record import MUTABLE_FIELDS
from .store import OPERATORS, parse_time

_encode = msgspec.json.Encoder().encode
_BRACKET = re.compile(r"^([^\[\]]+)\[(operator|value|connector)\]$")
_RESERVED = {"start_time", "end_time", "sort_by", "page", "page_size", "is_test", "all_envs", "fetch_filters",
             "include_fields", "environment", "operator"}
_KNOWN_OPERATORS = ", ".join(sorted(o or '""' for o in OPERATORS))
MAX_PAGE_SIZE = 1000
# The offset (page - 1) * page_size must fit the databases' 64-bit integers; far beyond any real page.
MAX_PAGE = 1_000_000_000


class StoreDown(GatewayError):
    status = 503
    type = "server_error"
    code = "store_unavailable"


def _json(status: int, body: Any) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json")


async def _context(request: Request) -> tuple[Any, RequestLogReader, str]:
    gateway = request.app.state.gateway
    principal = await gateway.authenticate(request.headers)
    observer = dict(gateway.observers).get("logging")  # this plugin's own observer
    reader = gateway.service(RequestLogReader)
    if observer is None or reader is None:
        raise NotFound("the logs API needs the `logging` observer running")
    return observer, reader, principal.tenant


def _query(request: Request, body: dict[str, Any]) -> LogQuery:
    params = {**dict(request.query_params), **{k: v for k, v in body.items() if k != "filters"}}
    filters: list[tuple[str, str, Any]] = []
    raw_filters = body.get("filters") or {}
    if not isinstance(raw_filters, dict):
        raise BadRequest("`filters` must be an object of {field: {operator, value}}", param="filters")
    for field, spec in raw_filters.items():
        if isinstance(spec, dict):
            op = spec.get("operator") or ""
            value = spec.get("value")
        else:
            op, value = "", spec
        if op not in OPERATORS:
            raise BadRequest(f"filter `{field}`: unknown operator `{op}` (known: {_KNOWN_OPERATORS})", param="filters")
        filters.append((field, op, value))
    # URL quick filters: ?field=value, ?field[operator]=..&field[value]=..; unknown fields are metadata (as Respan).
    bracket: dict[str, dict[str, str]] = {}
    for key, value in request.query_params.multi_items():
        m = _BRACKET.match(key)
        if m:
            bracket.setdefault(m[1], {})[m[2]] = value
        elif key not in _RESERVED:
            filters.append((_url_field(key), "", value))
    for field, spec in bracket.items():
        op = spec.get("operator", "")
        if op not in OPERATORS:
            raise BadRequest(f"filter `{field}`: unknown operator `{op}`", param="filters")
        value: Any = spec.get("value", "")
        if op == "in":
            value = [v for v in value.split(",")]
        filters.append((_url_field(field), op, value))
    connector = str(params.get("operator") or "AND").upper()
    if connector not in ("AND", "OR"):
        raise BadRequest("`operator` must be AND or OR", param="operator")
    page = _bounded_int(params, "page", 1, 1, MAX_PAGE)
    page_size = _bounded_int(params, "page_size", 100, 1, MAX_PAGE_SIZE)
    query = LogQuery(filters=filters, connector=connector, page=page, page_size=page_size,
                     sort_by=str(params.get("sort_by") or "-start_time"))
    for name in ("start_time", "end_time"):
        if params.get(name) not in (None, ""):
            try:
                setattr(query, name, parse_time(params[name]))
            except ValueError:
                raise BadRequest(f"`{name}` must be an ISO 8601 date-time", param=name) from None
    return query


def _bounded_int(params: Any, name: str, default: int, low: int, high: int) -> int:
    """``params[name]`` as an int in [low, high] (``default`` when absent), else a 400 naming it."""
    value = params.get(name)
    try:
        number = default if value in (None, "") else int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not low <= number <= high:
        raise BadRequest(f"`{name}` must be an integer between {low} and {high}", param=name)
    return number


def _url_field(name: str) -> str:
    from .record import KINDS

    if name in KINDS or name.startswith(("metadata__", "properties__")) or name in ("all_tokens", "ttft", "provider"):
        return name
    return f"metadata__{name}"


def _page_url(request: Request, page: int) -> str:
    params = dict(request.query_params)
    params["page"] = str(page)
    return f"{request.url.replace(query='')}?{urlencode(params)}"


async def _body(request: Request) -> dict[str, Any]:
    return await json_body(request) if request.method in ("POST", "PATCH") else {}


async def list_logs(request: Request) -> Response:
    _, reader, tenant = await _context(request)
    query = _query(request, await _body(request))
    try:
        count, results = await reader.list(tenant, query)
    except StoreUnavailable as exc:
        raise StoreDown(f"the log store is unavailable: {exc}") from None
    has_next = query.page * query.page_size < count
    return _json(200, {
        "count": count,
        "next": _page_url(request, query.page + 1) if has_next else None,
        "previous": _page_url(request, query.page - 1) if query.page > 1 else None,
        "results": results,
    })


async def summary(request: Request) -> Response:
    _, reader, tenant = await _context(request)
    query = _query(request, await _body(request))
    try:
        return _json(200, await reader.summary(tenant, query))
    except StoreUnavailable as exc:
        raise StoreDown(f"the log store is unavailable: {exc}") from None


async def one_log(request: Request) -> Response:
    observer, reader, tenant = await _context(request)
    unique_id = request.path_params["unique_id"]
    body = await _body(request)
    try:
        record = await reader.get(tenant, unique_id)
        if record is None:
            raise NotFound(f"no request log `{unique_id}`")
        if request.method == "GET":
            return _json(200, record)
        changes = _changes(body, record)
        if changes:
            await observer.store.patch(tenant, unique_id, changes)
            record.update(changes)
        return _json(200, record)
    except StoreUnavailable as exc:
        raise StoreDown(f"the log store is unavailable: {exc}") from None


def _changes(body: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(body) - MUTABLE_FIELDS)
    if unknown:
        raise BadRequest(
            f"cannot change {', '.join(f'`{k}`' for k in unknown)}: a record is immutable except "
            f"{', '.join(sorted(MUTABLE_FIELDS))}", param=unknown[0],
        )
    changes: dict[str, Any] = {}
    if "metadata" in body:
        metadata = body["metadata"]
        if metadata is not None and not isinstance(metadata, dict):
            raise BadRequest("`metadata` must be an object", param="metadata")
        # Merged key by key into the stored metadata, values stored as strings (as on the request).
        changes["metadata"] = {**(record.get("metadata") or {}), **(coerce_metadata(metadata) or {})}
    if "positive_feedback" in body:
        value = body["positive_feedback"]
        if value is not None and not isinstance(value, bool):
            raise BadRequest("`positive_feedback` must be true, false or null", param="positive_feedback")
        changes["positive_feedback"] = value
    if "note" in body:
        value = body["note"]
        if value is not None and not isinstance(value, str):
            raise BadRequest("`note` must be a string or null", param="note")
        changes["note"] = value
    return changes


ROUTES = [
    ("/api/request-logs/list/", list_logs, ["GET", "POST"]),
    ("/api/request-logs/list", list_logs, ["GET", "POST"]),
    ("/api/request-logs/summary/", summary, ["GET", "POST"]),
    ("/api/request-logs/summary", summary, ["GET", "POST"]),
    ("/api/request-logs/{unique_id}/", one_log, ["GET", "PATCH"]),
    ("/api/request-logs/{unique_id}", one_log, ["GET", "PATCH"]),
]
