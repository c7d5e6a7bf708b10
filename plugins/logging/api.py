"""The logs API (SPEC section 8), scoped to the caller's tenant:

``POST|GET /api/request-logs/list/``     filters, operators, paging, sorting
``POST|GET /api/request-logs/summary/``  totals of cost, tokens, requests, errors
``GET      /api/request-logs/{id}/``     one record
``PATCH    /api/request-logs/{id}/``     ``metadata`` (merged), ``positive_feedback``, ``note``

Reads within one process see every record this process has answered (the queue is flushed first);
records of other replicas appear within their ``flush_interval``.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import urlencode

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from respan_gateway import BadRequest, Gateway, GatewayError, NotFound
from respan_gateway.database import StoreUnavailable
from respan_gateway.params import coerce_metadata

from .observer import LoggingObserver
from .record import MUTABLE_FIELDS
from .store import OPERATORS, LogQuery, parse_time

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode
_BRACKET = re.compile(r"^([^\[\]]+)\[(operator|value|connector)\]$")
_RESERVED = {"start_time", "end_time", "sort_by", "page", "page_size", "is_test", "all_envs", "fetch_filters",
             "include_fields", "environment", "operator"}
_KNOWN_OPERATORS = ", ".join(sorted(o or '""' for o in OPERATORS))
MAX_PAGE_SIZE = 1000
READ_FLUSH_TIMEOUT = 2.0


class StoreDown(GatewayError):
    status = 503
    type = "server_error"
    code = "store_unavailable"


def _json(status: int, body: Any) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json")


async def _context(request: Request) -> tuple[LoggingObserver, str]:
    gateway: Gateway = request.app.state.gateway
    principal = await gateway.authenticate(request.headers)
    observer = dict(gateway.observers).get("logging")  # this plugin's own observer
    if not isinstance(observer, LoggingObserver) or observer.store is None:
        raise NotFound("the logs API needs the `logging` observer running")
    return observer, principal.tenant


async def _flush(observer: LoggingObserver) -> None:
    """Read-your-writes in this process: queued records go to the store before a read."""
    try:
        await asyncio.wait_for(observer.writer.flush(), READ_FLUSH_TIMEOUT)
    except (asyncio.TimeoutError, Exception):
        pass


async def _body(request: Request) -> dict[str, Any]:
    if request.method not in ("POST", "PATCH"):
        return {}
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = _decode(raw)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


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
    try:
        page = int(params.get("page") or 1)
        page_size = int(params.get("page_size") or 100)
    except (TypeError, ValueError):
        raise BadRequest("`page` and `page_size` must be integers", param="page") from None
    if page < 1 or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise BadRequest(f"`page` must be >= 1 and `page_size` between 1 and {MAX_PAGE_SIZE}", param="page_size")
    query = LogQuery(filters=filters, connector=connector, page=page, page_size=page_size,
                     sort_by=str(params.get("sort_by") or "-start_time"))
    for name in ("start_time", "end_time"):
        if params.get(name) not in (None, ""):
            try:
                setattr(query, name, parse_time(params[name]))
            except ValueError:
                raise BadRequest(f"`{name}` must be an ISO 8601 date-time", param=name) from None
    return query


def _url_field(name: str) -> str:
    from .record import KINDS

    if name in KINDS or name.startswith(("metadata__", "properties__")) or name in ("all_tokens", "ttft", "provider"):
        return name
    return f"metadata__{name}"


def _page_url(request: Request, page: int) -> str:
    params = dict(request.query_params)
    params["page"] = str(page)
    return f"{request.url.replace(query='')}?{urlencode(params)}"


async def list_logs(request: Request) -> Response:
    observer, tenant = await _context(request)
    query = _query(request, await _body(request))
    await _flush(observer)
    try:
        count, results = await observer.store.list(tenant, query)
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
    observer, tenant = await _context(request)
    query = _query(request, await _body(request))
    await _flush(observer)
    try:
        return _json(200, await observer.store.summary(tenant, query))
    except StoreUnavailable as exc:
        raise StoreDown(f"the log store is unavailable: {exc}") from None


async def one_log(request: Request) -> Response:
    observer, tenant = await _context(request)
    unique_id = request.path_params["unique_id"]
    body = await _body(request)
    try:
        record = await observer.store.get(tenant, unique_id)
        if record is None:
            await _flush(observer)
            record = await observer.store.get(tenant, unique_id)
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
