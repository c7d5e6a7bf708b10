"""The ASGI app: the two pure ASGI middlewares in front, the router's errors, and ``create_app``.

Pure ASGI throughout (no ``BaseHTTPMiddleware``): one small middleware stamps
``x-respan-gateway-request-id`` on every response, another bounds the requests in flight. The routes
(building the call, the declared endpoints) are in :mod:`.routes`; how answers and errors go back to
the client is in :mod:`.responses`. :class:`ReloadingApp` is the app of ``respan-gateway serve``'s
workers: the app of the config file, replaced on SIGHUP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .call import Call
from .config import Config
from .errors import GatewayError, MethodNotAllowed, NotFound, Overloaded
from .gateway import Gateway
from .ids import hex_id
from .responses import error_response, internal_error
from .routes import PipelineEndpoint, bounded_body, core_routes

log = structlog.get_logger("respan_gateway")

REQUEST_ID_HEADER = b"x-respan-gateway-request-id"


new_request_id = hex_id  # 24 hex digits, from a block of os.urandom (respan_gateway.ids)


class RequestIdMiddleware:
    """Gives every request an id (``scope["state"]["request_id"]``), every response its header, and
    every process-log line written while it is answered a ``request_id`` (structlog's contextvars)."""

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

        # A plain function returning send's awaitable: no coroutine frame per message (per stream chunk).
        def send_with_id(message: Message) -> Awaitable[None]:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            return send(message)

        # Every process-log line written while the request is answered carries its id.
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)


class AdmissionMiddleware:
    """At most ``[server] max_in_flight`` requests of this worker in the app at once (a stream until
    it ends; 0: no limit); one more gets a fast 503 with ``Retry-After`` rather than a place in an
    unbounded queue. The health probes are never refused: an overloaded worker is alive and, for a
    load balancer, best told apart by its 503s.

    ``routes``: path -> the ASGI app of a declared endpoint, which a POST to that path goes to
    directly, past Starlette's router (:class:`~respan_gateway.routes.PipelineEndpoint`)."""

    EXEMPT = frozenset({"/healthz", "/readyz"})

    def __init__(self, app: ASGIApp, limit: int, gateway: Gateway, routes: dict[str, ASGIApp] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.routes = routes or {}
        self.gateway = gateway
        self.style_for = gateway.style_for
        # Pipeline paths -> endpoint kind: a refused pipeline request is still a call that ends (a log
        # record, metrics), as every other rejection.
        self.kinds = {path: e.kind for e in gateway.endpoints for path in e.paths}
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.limit and self.in_flight >= self.limit:
            err = Overloaded(f"the gateway is at its limit of {self.limit} requests in flight; retry shortly")
            await error_response(err, self.style_for(scope["path"]))(scope, receive, send)
            kind = self.kinds.get(scope["path"]) if scope.get("method") == "POST" else None
            if kind is not None:
                await self._finish_refused(scope, kind, err)
            return
        self.in_flight += 1
        try:
            endpoint = self.routes.get(scope["path"]) if scope["method"] == "POST" else None
            await (endpoint or self.app)(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _finish_refused(self, scope: Scope, kind: str, err: Overloaded) -> None:
        """The refused call, without its body (never read), for the observers: the caller's tenant when
        its key is good (an in-memory lookup), else the unauthenticated one."""
        headers = Headers(scope=scope)
        call = Call(kind=kind, request_id=scope["state"]["request_id"], headers=headers, raw_body=b"", body={},
                    rejection=err)
        with contextlib.suppress(Exception):
            call.principal = await self.gateway.authenticate(headers)
        call.outcome.status, call.outcome.error = err.status, err
        call.timings.answered = time.perf_counter()
        self.gateway.finish(call)


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
    return internal_error(request.url.path, exc)


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
            gateway.metrics.close()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_exception, GatewayError: _gateway_error, Exception: _unexpected},
    )
    app.state.gateway = gateway
    # The declared endpoints' POSTs skip the router (exact paths; anything else, a 405 included, is routed).
    direct = {route.path: route.app for route in routes
              if isinstance(route.app, PipelineEndpoint) and route.methods == {"POST"}}
    return RequestIdMiddleware(AdmissionMiddleware(app, max(gateway.config.server.max_in_flight, 0), gateway, direct), gateway)


# -- the app of `respan-gateway serve`: reloaded on SIGHUP ------------------------------------------

class _Generation:
    """One gateway in service (or draining after a reload) and the requests it is answering."""

    __slots__ = ("app", "gateway", "active", "drained")

    def __init__(self, app: RequestIdMiddleware) -> None:
        self.app = app
        self.gateway: Gateway = app.gateway
        self.active = 0
        self.drained: asyncio.Event | None = None  # set once retired and idle


class ReloadingApp:
    """The gateway of the config file at ``path``, replaced by a new one on SIGHUP (or :meth:`reload`).

    A reload is atomic: the file is read and a whole new gateway built and started from it (plugins,
    providers, stores; a failure anywhere keeps the gateway in service and logs why, the error's
    message, which names the key and never a value). Then new requests go to the new gateway, and the
    old one finishes its requests in flight (streams included, up to ``[server] graceful_timeout``)
    before it shuts down (its log records are written). What a plugin keeps in the process (memory
    cache, in-process counters of budgets, sessions) starts afresh; metrics carry over
    (:class:`~respan_gateway.metrics.Registry`); what lives in Redis or the database is untouched.
    ``[server]`` settings the server reads at start (host, port, workers, backlog) need a restart.
    """

    def __init__(self, path: str | os.PathLike[str], on_serving: Callable[[], None] | None = None) -> None:
        self.path = Path(path)
        self._on_serving = on_serving  # called once the startup is done (the worker serves)
        self.generation = _Generation(create_app(Config.from_file(self.path)))
        self._lock = asyncio.Lock()
        self._draining: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def gateway(self) -> Gateway:
        return self.generation.gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        generation = self.generation
        generation.active += 1
        try:
            await generation.app(scope, receive, send)
        finally:
            generation.active -= 1
            if generation.drained is not None and generation.active == 0:
                generation.drained.set()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        try:
            await self.gateway.startup()
        except Exception as exc:
            log.error("startup_failed", error=f"{type(exc).__name__}: {exc}")
            await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
            return
        self._watch_sighup()
        if self._on_serving is not None:
            self._on_serving()
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        self._unwatch_sighup()
        async with self._lock:  # a reload in progress finishes first
            await asyncio.gather(*self._draining, return_exceptions=True)
            await self.gateway.shutdown()
            self.gateway.metrics.close()
        await send({"type": "lifespan.shutdown.complete"})

    def _watch_sighup(self) -> None:
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
            return
        self._loop = asyncio.get_running_loop()
        try:
            self._loop.add_signal_handler(signal.SIGHUP, lambda: self._loop.create_task(self.reload()))  # type: ignore[union-attr]
        except (NotImplementedError, RuntimeError, ValueError):  # an event loop without signal support
            self._loop = None
            return
        # The master of `serve` blocks SIGHUP before its workers start (cli.SighupForwarder): from
        # now on it reaches the handler, a reload asked while this worker started included.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})

    def _unwatch_sighup(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_signal_handler(signal.SIGHUP)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # draining: a late SIGHUP must not kill it
            self._loop = None

    async def reload(self) -> bool:
        """Build a gateway from the file as it is now and put it in service; False (the current one
        kept, the reason logged) when the file or the new gateway is bad."""
        async with self._lock:
            started = time.perf_counter()
            new = None
            try:
                config = Config.from_file(self.path)
                new = create_app(gateway=Gateway.build(config, replaces=self.gateway))
                await new.gateway.startup()
            except Exception as exc:  # ConfigError, or a plugin failing to start: keep what runs
                if new is not None:
                    with contextlib.suppress(Exception):
                        await new.gateway.shutdown()
                log.error("config_reload_failed", config=str(self.path), pid=os.getpid(),
                          error=f"{type(exc).__name__}: {exc}", kept="the running config")
                return False
            old, self.generation = self.generation, _Generation(new)
            log.info("config_reloaded", config=str(self.path), pid=os.getpid(),
                     seconds=round(time.perf_counter() - started, 3), draining=old.active)
            task = asyncio.get_running_loop().create_task(self._retire(old))
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)
            return True

    async def _retire(self, old: _Generation) -> None:
        old.drained = asyncio.Event()
        if old.active == 0:
            old.drained.set()
        try:
            await asyncio.wait_for(old.drained.wait(), old.gateway.config.server.graceful_timeout)
        except asyncio.TimeoutError:
            log.warning("config_reload_drain_timeout", requests_left=old.active)
        try:
            await old.gateway.shutdown()
        except Exception as exc:  # noqa: BLE001 - the new gateway is serving: say it, go on
            log.error("config_reload_old_shutdown_failed", error=f"{type(exc).__name__}: {exc}")
