"""The ASGI app: the two pure ASGI middlewares in front, the router's errors, and ``create_app``.

Pure ASGI throughout (no ``BaseHTTPMiddleware``): one small middleware stamps
``x-respan-gateway-request-id`` on every response, another bounds the requests in flight. The routes
(building the call, the declared endpoints) are in :mod:`.routes`; how answers and errors go back to
the client is in :mod:`.responses`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .config import Config
from .errors import GatewayError, MethodNotAllowed, NotFound, Overloaded
from .gateway import Gateway
from .responses import error_response
from .routes import bounded_body, core_routes

log = structlog.get_logger("respan_gateway")

REQUEST_ID_HEADER = b"x-respan-gateway-request-id"


def new_request_id() -> str:
    return os.urandom(12).hex()


class RequestIdMiddleware:
    """Gives every request an id (``scope["state"]["request_id"]``) and every response its header."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        header = (REQUEST_ID_HEADER, request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_id)


class AdmissionMiddleware:
    """At most ``[server] max_in_flight`` requests of this worker in the app at once (a stream until
    it ends); one more gets a fast 503 with ``Retry-After`` rather than a place in an unbounded queue.
    The health probes are never refused: an overloaded worker is alive and, for a load balancer, best
    told apart by its 503s."""

    EXEMPT = frozenset({"/healthz", "/readyz"})

    def __init__(self, app: ASGIApp, limit: int, style_for: Callable[[str], str]) -> None:
        self.app = app
        self.limit = limit
        self.style_for = style_for
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            err = Overloaded(f"the gateway is at its limit of {self.limit} requests in flight; retry shortly")
            await error_response(err, self.style_for(scope["path"]))(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


# -- errors the router and Starlette raise ----------------------------------------------------------

async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    style = request.app.state.gateway.style_for(request.url.path)
    if exc.status_code == 404:
        return error_response(NotFound(f"no route for {request.method} {request.url.path}"), style)
    if exc.status_code == 405:
        allowed = exc.headers.get("Allow", "") if exc.headers else ""
        err = MethodNotAllowed(f"method {request.method} is not allowed on {request.url.path}", headers={"allow": allowed})
        return error_response(err, style)
    return error_response(GatewayError(str(exc.detail), status=exc.status_code, type="invalid_request_error"), style)


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response(exc, request.app.state.gateway.style_for(request.url.path))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled_error", path=request.url.path, error=type(exc).__name__, exc_info=exc)
    return error_response(GatewayError("internal gateway error; see the gateway's logs"))


# -- the app ----------------------------------------------------------------------------------------

def create_app(config: Config | None = None, *, gateway: Gateway | None = None, plugins: tuple[Any, ...] = ()) -> RequestIdMiddleware:
    """Build the ASGI app from a config (or an already built :class:`Gateway`)."""
    if gateway is None:
        if config is None:
            raise TypeError("create_app() needs a config or a gateway")
        gateway = Gateway.build(config, plugins)
    plugin_routes = [Route(path, endpoint, methods=methods) for path, endpoint, methods in gateway.routes]
    for route in plugin_routes:
        route.app = bounded_body(route.app, gateway.config.server.max_body_bytes, gateway.style_for)
    routes = core_routes(gateway) + plugin_routes

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.startup()
        try:
            yield
        finally:
            await gateway.shutdown()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_exception, GatewayError: _gateway_error, Exception: _unexpected},
    )
    app.state.gateway = gateway
    limit = gateway.config.server.max_in_flight
    return RequestIdMiddleware(AdmissionMiddleware(app, limit, gateway.style_for) if limit > 0 else app, gateway)
