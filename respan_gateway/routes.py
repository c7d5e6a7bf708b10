"""The core's routes: building the call from a request, the declared endpoints' ASGI endpoints, and the
health, models and plugins routes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import msgspec
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .call import Call
from .endpoints import Endpoint
from .errors import BadRequest, GatewayError, NotFound, PayloadTooLarge
from .gateway import Gateway
from .model_catalog import public_listing
from .openai_chat import check_messages
from .responses import CLIENT_GONE, CallResponse, error_response, internal_error, json_response, send_result


_decode_body = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_encode = msgspec.json.Encoder().encode


# -- building the call ------------------------------------------------------------------------------

async def read_body(receive: Receive, headers: Headers, limit: int) -> bytes:
    """The request body, straight from the ASGI ``receive``: at most ``limit`` bytes (413 beyond); the
    client leaving before its end raises Starlette's ``ClientDisconnect``, as ``Request.stream`` does."""
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):  # the usual one message
        body = message.get("body", b"")
        if len(body) > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        return body
    pieces, size = [], 0
    while True:
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        if message["type"] == "http.request":
            piece = message.get("body", b"")
            size += len(piece)
            if size > limit:
                raise PayloadTooLarge(f"request body is larger than {limit} bytes")
            pieces.append(piece)
            if not message.get("more_body", False):
                return b"".join(pieces)
        message = await receive()


async def json_body(request: Request, kind: Any = None) -> Any:
    """A plugin API's JSON request body: an object (an empty body is ``{}``), or decoded into ``kind``
    (a msgspec type) when given. Not JSON, not an object or not of ``kind``: a 400 naming the param."""
    raw = await request.body()
    if kind is None:
        if not raw.strip():
            return {}
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise BadRequest(f"the request body is not valid JSON ({exc})") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        return body
    try:
        return msgspec.json.decode(raw if raw.strip() else b"{}", type=kind)
    except msgspec.ValidationError as exc:
        text = str(exc)
        param = text.rsplit("at `$.", 1)[1].split("`")[0].split(".")[0].split("[")[0] if "at `$." in text else None
        raise BadRequest(f"invalid request body: {text}", param=param) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON ({exc})") from None


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


async def build_call(scope: Scope, receive: Receive, kind: str, gateway: Gateway) -> Call:
    """The call for this request. A body that is too large, or not a JSON object (or has a mistyped
    ``model`` or ``stream``) does not stop here: the call carries the error as ``rejection``, raised by the first
    stage that reads the body, so that the stages before it (auth, logging) still see the request."""
    headers = Headers(scope=scope)
    request_id = scope["state"]["request_id"]
    body: dict[str, msgspec.Raw] = {}
    model, stream, rejection = None, False, None
    try:
        raw = await read_body(receive, headers, gateway.config.server.max_body_bytes)
    except PayloadTooLarge as exc:  # still a call: auth and logging see it, as any rejected request
        return Call(kind=kind, request_id=request_id, headers=headers, raw_body=b"", body={}, rejection=exc)
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
            # `[]` is checked before the provider call (Gateway.dispatch): a managed prompt may fill it.
            check_messages(body["messages"], allow_empty=True)
    except BadRequest as exc:
        body, rejection = {}, exc
    return Call(
        kind=kind,
        request_id=request_id,
        headers=headers,
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

class PipelineEndpoint:
    """The ASGI app of a declared :class:`Endpoint`: build the call, run the pipeline, send the answer
    in the endpoint's style; the outcome is completed and observed once the answer is sent.

    Pure ASGI, no Starlette ``Request``: ``create_app`` sends a POST to one of its paths here
    directly, past Starlette's router and exception middlewares (the profile of a request through them
    showed them as the largest part of the core's own cost); other methods go through the router (405)."""

    def __init__(self, endpoint: Endpoint, gateway: Gateway) -> None:
        self.endpoint = endpoint
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await self.respond(scope, receive)
        except Exception as exc:  # as Starlette's ServerErrorMiddleware: a 500 envelope, then re-raised
            await internal_error(scope["path"], exc)(scope, receive, send)
            raise
        await response(scope, receive, send)

    async def respond(self, scope: Scope, receive: Receive) -> Response:
        endpoint, gateway = self.endpoint, self.gateway
        style = endpoint.style
        call = None
        try:
            call = await build_call(scope, receive, endpoint.kind, gateway)
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
    """200 when every check but the advisory ones (Redis) passes; ``stores``: the stores each plugin
    keeps in the database, and whether it answers; ``degraded``: the advisory checks that fail."""
    gateway: Gateway = request.app.state.gateway
    checks = await gateway.ready()
    ok = all(v for k, v in checks.items() if k not in gateway.ADVISORY_CHECKS)
    body: dict[str, Any] = {"status": "ready" if ok else "not ready", "checks": checks}
    if gateway.database is not None:
        body["stores"] = {name: checks["database"] for name in gateway.stores}
    degraded = sorted(k for k, v in checks.items() if k in gateway.ADVISORY_CHECKS and not v)
    if degraded:
        body["degraded"] = degraded
    return json_response(200 if ok else 503, _encode(body))


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
        serve = PipelineEndpoint(endpoint, gateway)
        routes += [Route(path, serve, methods=["POST"]) for path in endpoint.paths]
    routes += [Route(path, list_models, methods=["GET"]) for path in ("/api/models", "/api/v1/models", "/v1/models")]
    routes.append(Route("/api/models/public", public_models, methods=["GET"]))
    routes += [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/-/plugins", plugins, methods=["GET"]),
    ]
    return routes
