"""How results and errors go back to the client: JSON answers, server-sent event streams, error envelopes.

A complete answer is a :class:`CallResponse` and a stream a :class:`StreamResponse`; both complete the
call's outcome and call the observers once the last byte is sent (or the client left). Streams go out
chunk by chunk as they arrive; the first chunk is awaited before the response starts, so a failure
before it is still an ordinary error response.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import structlog
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .call import Call, Chunk, JSONResult, Result, StreamResult, aclose
from .endpoints import Accumulator, Endpoint
from .errors import GatewayError
from .gateway import Gateway
from .outcome import StreamEnd
from .sse import DONE_FRAME, frame

log = structlog.get_logger("respan_gateway")


CLIENT_GONE = 499  # nginx's "client closed request": the client left before the answer ended


def json_response(status: int, content: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(content, status_code=status, headers=headers, media_type="application/json")


def internal_error(path: str, exc: BaseException) -> Response:
    """The answer to an exception nothing handled (a bug): logged with its traceback, a 500 envelope
    that names nothing of it."""
    log.error("unhandled_error", path=path, error=type(exc).__name__, exc_info=exc)
    return error_response(GatewayError("internal gateway error; see the gateway's logs"))


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
                 gateway: Gateway | None = None, accumulator: Accumulator | None = None,
                 endpoint: Endpoint | None = None) -> None:
        self.result = result
        self.call = call
        self.first = first
        self.style = style
        self.endpoint = endpoint
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
            if self.first is not None:
                # Sent before the disconnect watcher's task group is made: nothing between the head and the client.
                if self.accumulator is not None:
                    self.accumulator.feed(self.first)
                await send({"type": "http.response.body", "body": frame(self.first), "more_body": True})
                outcome.chunks += 1
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
        feed = self.accumulator.feed if self.accumulator is not None else None
        end: StreamEnd = "complete"
        try:
            async for chunk in chunks:
                if self.client_gone:
                    return  # the iterator is closed by the caller: the upstream stops, the log says 499
                if feed is not None:
                    feed(chunk)
                await send({"type": "http.response.body", "body": frame(chunk), "more_body": True})
                outcome.chunks += 1
            done = self.endpoint.stream_done if self.endpoint is not None else None
            tail = done if done is not None else DONE_FRAME if self.style == "openai" else b""
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
        if self.endpoint is not None and self.endpoint.stream_error is not None:
            return frame(self.endpoint.stream_error(exc, self.call))
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
    """A complete answer (or an error) that completes the call's outcome once it has been sent.

    The hot path's response: its raw headers are built in one pass here (the headers Starlette's
    ``Response`` would send, in its order: the given ones, then content-length and content-type)."""

    def __init__(self, status: int, content: bytes, headers: dict[str, str] | None, call: Call, gateway: Gateway) -> None:
        self.status_code = status
        self.body = content
        self.background = None
        self.call = call
        self.gateway = gateway
        raw: list[tuple[bytes, bytes]] = []
        has_length = has_type = False
        if headers:
            for key, value in headers.items():
                key = key.lower()
                if key == "content-length":
                    has_length = True
                elif key == "content-type":
                    has_type = True
                raw.append((key.encode("latin-1"), value.encode("latin-1")))
        if not has_length and not (status < 200 or status in (204, 304)):
            raw.append((b"content-length", b"%d" % len(content)))
        if not has_type:
            raw.append((b"content-type", b"application/json"))
        self.raw_headers = raw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": self.body})
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
    return StreamResponse(result, call, first, style, gateway, accumulator, endpoint)
