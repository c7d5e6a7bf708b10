"""``DELETE /api/caches/``: delete the caller's tenant's cached answers, all or those of a model or customer.

Filters, in the query string or a JSON object body (both may be used; the body wins): ``model`` (the
model that answered, as the request named it) and ``customer_identifier`` (the request's customer).
The answer is ``{"deleted": <count>}``. Any gateway key of the tenant may call it, as for the logs API.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from respan_gateway import BadRequest, Gateway, GatewayError, NotFound, json_body

from .middleware import ResponseCache

_encode = msgspec.json.Encoder().encode
FILTERS = ("model", "customer_identifier")


class CacheUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "cache_unavailable"


async def purge_caches(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    principal = await gateway.authenticate(request.headers)
    cache = dict(gateway.middlewares).get("cache")  # this plugin's own middleware
    if not isinstance(cache, ResponseCache):
        raise NotFound("the response cache is off: the `cache` middleware is not in the pipeline")
    filters: dict[str, Any] = dict(request.query_params)
    filters.update(await json_body(request))
    unknown = sorted(set(filters) - set(FILTERS))
    if unknown:
        raise BadRequest(f"unknown filter `{unknown[0]}` (filters: {', '.join(FILTERS)})", param=unknown[0])
    for name in FILTERS:
        if filters.get(name) is not None and not isinstance(filters[name], (str, int)):
            raise BadRequest(f"`{name}` must be a string", param=name)
    model = filters.get("model")
    customer = filters.get("customer_identifier")
    try:
        deleted = await cache.purge(principal.tenant, model=None if model is None else str(model),
                                    customer=None if customer is None else str(customer))
    except cache.errors:
        raise CacheUnavailable("the cache's Redis is unreachable: nothing was deleted; retry") from None
    return Response(_encode({"deleted": deleted}), media_type="application/json")


ROUTES = [("/api/caches/", purge_caches, ["DELETE"])]

__all__ = ["CacheUnavailable", "ROUTES", "purge_caches"]
