"""``GET`` and ``DELETE /api/responses/{id}`` (and the aliases): the caller's tenant's stored responses.

``GET`` answers the ``response`` object as the client got it when it was made (without a
``request_breakdown``); ``DELETE`` removes the gateway's copy (``{"id", "object": "response",
"deleted": true}``). Another tenant's id, an expired or deleted one, or one made with ``store: false``
is a 404 in the OpenAI envelope.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from respan_gateway import NotFound
from respan_gateway.database import StoreUnavailable

from .middleware import StoreDown
from .store import ResponseStore

_encode = msgspec.json.Encoder().encode
PREFIXES = ("/api/responses", "/api/v1/responses", "/v1/responses")


async def _context(request: Request) -> tuple[ResponseStore, str, str]:
    gateway = request.app.state.gateway
    principal = await gateway.authenticate(request.headers)
    middleware = dict(gateway.middlewares).get("responses")  # this plugin's own stage
    if middleware is None:
        raise NotFound("stored responses need the `responses` middleware in the pipeline")
    return middleware.store, principal.tenant, request.path_params["response_id"]


def _missing(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", param="response_id", code="response_not_found")


def _json(body: Any) -> Response:
    return Response(_encode(body), media_type="application/json")


async def get_response(request: Request) -> Response:
    store, tenant, response_id = await _context(request)
    try:
        stored = await store.get(tenant, response_id)
    except StoreUnavailable:
        raise StoreDown("the store of responses is unavailable: retry later") from None
    if stored is None:
        raise _missing(response_id)
    return _json(stored.response)


async def delete_response(request: Request) -> Response:
    store, tenant, response_id = await _context(request)
    try:
        deleted = await store.delete(tenant, response_id)
    except StoreUnavailable:
        raise StoreDown("the store of responses is unavailable: retry later") from None
    if not deleted:
        raise _missing(response_id)
    return _json({"id": response_id, "object": "response", "deleted": True})


async def stored_response(request: Request) -> Response:
    return await (delete_response if request.method == "DELETE" else get_response)(request)


ROUTES = [(f"{prefix}/{{response_id}}", stored_response, ["GET", "DELETE"]) for prefix in PREFIXES]
