"""The ASGI app: routes, the call builder, and how results and errors go back to the client.

Pure ASGI throughout (no ``BaseHTTPMiddleware``): one small middleware stamps
``x-respan-gateway-request-id`` on every response; endpoints build a :class:`Call`, run the compiled
pipeline, and send the result. Streams go out chunk by chunk as they arrive; the first chunk is awaited
before the response starts, so a failure before it is still an ordinary error response.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import msgspec
import structlog
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .call import Call, Chunk, JSONResult, Result, StreamResult, aclose
from .config import Config
from .endpoints import Accumulator, Endpoint
from .errors import BadRequest, GatewayError, MethodNotAllowed, NotFound, Overloaded, PayloadTooLarge
from .gateway import Gateway
from .model_catalog import public_listing
from .openai_chat import check_messages
from .outcome import StreamEnd
from .sse import DONE_FRAME, frame

log = structlog.get_logger("respan_gateway")

_decode_body = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode

REQUEST_ID_HEADER = b"x-respan-gateway-request-id"
CLIENT_GONE = 499  # nginx's "client closed request": the client left before the answer ended


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


# -- responses --------------------------------------------------------------------------------------

def json_response(status: int, content: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(content, status_code=status, headers=headers, media_type="application/json")


def error_response(exc: GatewayError, style: str = "openai", extra_headers: dict[str, str] | None = None) -> Response:
    headers = {**exc.headers, **(extra_headers or {})}
    return json_response(exc.status, exc.render(style), headers)


class StreamResponse(Response):
    """Sends a :class:`StreamResult` as server-sent events, watching for the client going away.

    Hypercorn drops sends silently after a disconnect, so ``receive()`` is watched: when the client
    leaves, the stream loop is cancelled and the chunk iterator closed, which closes the upstream
    request. The cancel alone is not enough: while every awaited read completes at once (a fast
    upstream) it is never delivered, so the watcher also sets a flag that the loop checks per chunk.
    A failure after the first chunk ends the stream with an error event, never a silent end.
    """

    media_type = "text/event-stream"

    def __init__(self, result: StreamResult, call: Call, first: Chunk | None, style: str,
                 gateway: Gateway | None = None, accumulator: Accumulator | None = None) -> None:
        self.result = result
        self.call = call
        self.first = first
        self.style = style
        self.gateway = gateway
        self.accumulator = accumulator
        self.status_code = result.status
        self.background = None
        self.client_gone = False  # set by the disconnect watcher, checked between chunks
        self.init_headers({
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
            **call.response_headers,
            **result.headers,
        })

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks = self.result.chunks
        outcome = self.call.outcome
        outcome.status = self.status_code
        # Until the last frame is sent, an end is the client's leaving (a cancel or a failed send).
        outcome.stream_end = "client_gone"
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_disconnect, receive, tg.cancel_scope)
                await self._send_chunks(chunks, send)
                tg.cancel_scope.cancel()
        finally:
            await aclose(chunks, quiet=True)
            if outcome.stream_end == "client_gone":
                outcome.status = CLIENT_GONE
            if self.accumulator is not None:
                outcome.answer = self.accumulator.answer()
            if self.gateway is not None:
                self.gateway.finish(self.call)

    async def _send_chunks(self, chunks: AsyncIterator[Chunk], send: Send) -> None:
        outcome = self.call.outcome
        accumulator = self.accumulator
        end: StreamEnd = "complete"
        try:
            if self.first is not None:
                if accumulator is not None:
                    accumulator.feed(self.first)
                await send({"type": "http.response.body", "body": frame(self.first), "more_body": True})
                outcome.chunks += 1
            async for chunk in chunks:
                if self.client_gone:
                    return  # the iterator is closed by the caller: the upstream stops, the log says 499
                if accumulator is not None:
                    accumulator.feed(chunk)
                await send({"type": "http.response.body", "body": frame(chunk), "more_body": True})
                outcome.chunks += 1
            tail = DONE_FRAME if self.style == "openai" else b""
        except GatewayError as exc:
            tail, end = self._error_frame(exc), "error"
            outcome.error, outcome.status = exc, exc.status
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            log.exception("stream_failed", request_id=self.call.request_id)
            error = GatewayError(f"internal gateway error while streaming ({type(exc).__name__})")
            tail, end = self._error_frame(error), "error"
            outcome.error, outcome.status = error, 500
        await send({"type": "http.response.body", "body": tail, "more_body": False})
        outcome.stream_end = end

    def _error_frame(self, exc: GatewayError) -> bytes:
        if self.style == "anthropic":
            return frame(Chunk(exc.render("anthropic"), "error"))
        return frame(Chunk(exc.render("openai")))

    async def _watch_disconnect(self, receive: Receive, scope: anyio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.client_gone = True
                scope.cancel()
                return


class CallResponse(Response):
    """A complete answer (or an error) that completes the call's outcome once it has been sent."""

    def __init__(self, status: int, content: bytes, headers: dict[str, str] | None, call: Call, gateway: Gateway) -> None:
        super().__init__(content, status_code=status, headers=headers, media_type="application/json")
        self.call = call
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.gateway.finish(self.call)


async def send_result(result: Result, call: Call, style: str, gateway: Gateway | None = None,
                      endpoint: Endpoint | None = None) -> Response:
    """The client's response for ``result``; a stream's first chunk is awaited here (see module doc).

    With ``gateway``, the response completes ``call.outcome`` and calls the observers once sent."""
    if isinstance(result, JSONResult):
        headers = {**call.response_headers, **result.headers} if call.response_headers else result.headers
        if gateway is None:
            return json_response(result.status, result.content, headers)
        call.outcome.status = result.status
        if gateway.needs_answer and call.outcome.answer is None:  # a stage may have kept the provider's answer
            call.outcome.answer = result.data
        return CallResponse(result.status, result.content, headers, call, gateway)
    try:
        first = await anext(result.chunks)
        call.timings.first_byte = time.perf_counter()
    except StopAsyncIteration:
        first = None
    except BaseException:
        await aclose(result.chunks, quiet=True)
        raise
    accumulator = None
    if gateway is not None and gateway.needs_answer and endpoint is not None and endpoint.accumulator is not None:
        accumulator = endpoint.accumulator()
    return StreamResponse(result, call, first, style, gateway, accumulator)


# -- building the call ------------------------------------------------------------------------------

async def read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    body = b""
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    return body


def bounded_body(app: ASGIApp, limit: int, style_for: Callable[[str], str]) -> ASGIApp:
    """``app`` (a route a plugin registers) with its request body read first, at most ``limit`` bytes:
    larger is a 413 before the endpoint runs, so no plugin endpoint reads an unbounded body."""

    async def bounded(scope: Scope, receive: Receive, send: Send) -> None:
        length = Headers(scope=scope).get("content-length")
        too_large = PayloadTooLarge(f"request body is larger than {limit} bytes")
        if length is not None and length.isdigit() and int(length) > limit:
            await error_response(too_large, style_for(scope["path"]))(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > limit:
                await error_response(too_large, style_for(scope["path"]))(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await app(scope, replay, send)

    return bounded


async def build_call(request: Request, kind: str, gateway: Gateway, *, needs_model: bool = True) -> Call:
    """The call for this request. A body that is not a JSON object (or has a mistyped ``model`` or
    ``stream``) does not stop here: the call carries the error as ``rejection``, raised by the first
    stage that reads the body, so that the stages before it (auth, logging) still see the request."""
    raw = await read_body(request, gateway.config.server.max_body_bytes)
    body: dict[str, msgspec.Raw] = {}
    model, stream, rejection = None, False, None
    try:
        if not raw.strip():
            raise BadRequest("the request body is empty: send a JSON object")
        if not raw.isascii():  # Raw fields pass through undecoded: check the whole body once (isascii is cheap)
            try:
                raw.decode()
            except UnicodeDecodeError as exc:
                raise BadRequest(f"the request body is not valid UTF-8 (byte {exc.start})") from None
        try:
            body = _decode_body(raw)
        except msgspec.ValidationError:
            raise BadRequest("the request body must be a JSON object") from None
        except msgspec.DecodeError as exc:
            raise BadRequest(f"the request body is not valid JSON ({exc})") from None
        except RecursionError:
            raise BadRequest("the request body is nested too deeply to be read") from None
        model = _field(body, "model", str)
        stream = _field(body, "stream", bool) or False
        if kind == "chat" and "messages" in body:
            check_messages(body["messages"])
    except BadRequest as exc:
        body, rejection = {}, exc
    return Call(
        kind=kind,
        request_id=request.scope["state"]["request_id"],
        headers=request.headers,
        raw_body=raw,
        body=body,
        model=model,
        stream=stream,
        rejection=rejection,
    )


# Reused typed decoders: `decode(raw, type=str | None)` builds a new union type each call (~2 us, 20x).
_FIELD_DECODERS = {str: msgspec.json.Decoder(str | None), bool: msgspec.json.Decoder(bool | None)}


def _field(body: dict[str, msgspec.Raw], name: str, type_: type) -> Any:
    raw = body.get(name)
    if raw is None:
        return None
    try:
        return _FIELD_DECODERS[type_].decode(raw)
    except msgspec.ValidationError:
        raise BadRequest(f"`{name}` must be a {type_.__name__}", param=name) from None


# -- endpoints --------------------------------------------------------------------------------------

def pipeline_endpoint(endpoint: Endpoint) -> Any:
    """The ASGI endpoint of a declared :class:`Endpoint`: build the call, run the pipeline, send the
    answer in the endpoint's style; the outcome is completed and observed once the answer is sent."""
    style = endpoint.style

    async def serve(request: Request) -> Response:
        gateway: Gateway = request.app.state.gateway
        call = None
        try:
            call = await build_call(request, endpoint.kind, gateway)
            call.own_fields = endpoint.own_fields
            if endpoint.prepare is not None and call.rejection is None:
                endpoint.prepare(call)
            try:
                result = await gateway.handle(call)
            finally:
                call.timings.answered = time.perf_counter()
            return await send_result(result, call, style, gateway, endpoint)
        except GatewayError as exc:
            if call is None:
                return error_response(exc, style)
            call.outcome.status, call.outcome.error = exc.status, exc
            headers = {**exc.headers, **call.response_headers}
            return CallResponse(exc.status, exc.render(style), headers, call, gateway)
        except BaseException as exc:
            if call is not None:  # the client left (a cancel) or the gateway failed: still one outcome
                if _cancelled():
                    call.outcome.status = CLIENT_GONE
                else:
                    call.outcome.status = 500
                    call.outcome.error = GatewayError(f"internal gateway error ({type(exc).__name__})")
                gateway.finish(call)
            raise

    return serve


def _cancelled() -> bool:
    import sys

    return isinstance(sys.exc_info()[1], anyio.get_cancelled_exc_class())


async def list_models(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    await gateway.authenticate(request.headers)
    return json_response(200, _encode({"object": "list", "data": gateway.catalog.listing()}))


async def healthz(request: Request) -> Response:
    return json_response(200, b'{"status":"ok"}')


async def readyz(request: Request) -> Response:
    checks = await request.app.state.gateway.ready()
    ok = all(checks.values())
    return json_response(200 if ok else 503, _encode({"status": "ready" if ok else "not ready", "checks": checks}))


async def public_models(request: Request) -> Response:
    """The model catalog with prices (no auth, like Respan's: prices and capabilities are public)."""
    return json_response(200, _encode(public_listing(request.app.state.gateway.catalog)))


async def plugins(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    if not gateway.config.server.expose_plugins:
        raise NotFound("not found")
    return json_response(200, _encode({
        "plugins": gateway.plugin_info(),
        "pipeline": [name for name, _ in gateway.middlewares],
        "provider_types": sorted(gateway.adapter_types),
        "providers": {pid: p.settings.type or pid for pid, p in gateway.providers.items()},
    }))


def core_routes(gateway: Gateway) -> list[Route]:
    routes = []
    for endpoint in gateway.endpoints:
        serve = pipeline_endpoint(endpoint)
        routes += [Route(path, serve, methods=["POST"]) for path in endpoint.paths]
    routes += [Route(path, list_models, methods=["GET"]) for path in ("/api/models", "/api/v1/models", "/v1/models")]
    routes.append(Route("/api/models/public", public_models, methods=["GET"]))
    routes += [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/-/plugins", plugins, methods=["GET"]),
    ]
    return routes


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
