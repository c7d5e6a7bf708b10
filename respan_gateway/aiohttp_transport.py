"""An httpx2 transport that carries requests over aiohttp's client: ``[upstream] transport = "aiohttp"``.

Adapters keep speaking httpx's API (``httpx2.AsyncClient``); only the bytes go through aiohttp, whose
connection pool costs far less CPU per request under concurrency than httpcore's (figures in
``docs/performance.md``). The transport keeps httpx's contract:

- response bodies stream: each piece is handed on as soon as aiohttp has it, nothing is buffered;
- aiohttp does not decompress (httpx2 decodes ``content-encoding`` itself, as with its own transport);
- failures are raised as httpx2's exceptions (``ConnectTimeout``, ``ReadTimeout``, ``ConnectError``,
  ``ReadError``, ``RemoteProtocolError``), so the core's error mapping (504 for timeouts, 502 for the
  rest) and every adapter work unchanged;
- closing a response before its end closes that connection (aiohttp's ``release()`` does).

Timeouts come from the request (httpx2 puts them in ``request.extensions["timeout"]``): ``connect``
bounds the TCP/TLS connect, ``pool`` is added to it (aiohttp's ``connect`` includes the wait for a
free connection), ``read`` bounds each read. aiohttp has no write timeout; ``write`` is not applied.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx2
import yarl

from .config import UpstreamSettings

# Headers aiohttp computes itself from the body it sends.
_SKIP_HEADERS = frozenset({b"content-length", b"transfer-encoding"})


class AiohttpResponseStream(httpx2.AsyncByteStream):
    """A response body read from aiohttp as it arrives; failures become httpx2 exceptions."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx2.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        while True:
            try:
                piece = await content.readany()
            except Exception as exc:
                raise _map_error(exc, self._request, reading=True) from exc
            if not piece:
                return
            yield piece

    async def aclose(self) -> None:
        # Returns the connection to the pool when the body was read to its end, closes it otherwise.
        self._response.release()


class AiohttpTransport(httpx2.AsyncBaseTransport):
    """One aiohttp session (one connection pool) per process, created on first use in the running loop."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[Any, Any, Any], aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._settings.max_connections,
            limit_per_host=0,
            # Keep connections alive as long as the httpx2 transport does (60 s).
            keepalive_timeout=60.0,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None),
        )
        return self._session

    def _timeout(self, request: httpx2.Request) -> aiohttp.ClientTimeout:
        spec = request.extensions.get("timeout") or {}
        key = (spec.get("connect"), spec.get("read"), spec.get("pool"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            connect, read, pool = key
            timeout = aiohttp.ClientTimeout(
                total=None,
                connect=None if connect is None or pool is None else connect + pool,
                sock_connect=connect,
                sock_read=read,
            )
            if len(self._timeouts) < 256:  # per-request timeouts vary little; bound the cache anyway
                self._timeouts[key] = timeout
        return timeout

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        session = self._session or self._open()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw if k.lower() not in _SKIP_HEADERS]
        try:
            body = request.content
        except httpx2.RequestNotRead:
            body = await request.aread()
        timeout = self._timeout(request)
        url = yarl.URL(str(request.url), encoded=True)
        for attempt in (1, 2):
            try:
                response = await session.request(
                    request.method,
                    # As encoded: yarl would otherwise normalise the path (`%3A` to `:`), and a signed request
                    # (AWS SigV4 signs the path) must reach the provider byte for byte as it was signed.
                    url,
                    headers=headers,
                    data=body or None,
                    allow_redirects=False,
                    timeout=timeout,
                    skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                )
                break
            except Exception as exc:
                # A pooled connection the upstream closed while it sat idle (its keep-alive ran out first)
                # fails as soon as it is written to or read, before any answer: send once more, on a new
                # connection, as httpcore does for a stale connection. Not for timeouts or refused connects.
                if attempt == 1 and _stale(exc):
                    continue
                raise _map_error(exc, request, reading=False) from exc
        return httpx2.Response(
            response.status,
            headers=response.raw_headers,
            stream=AiohttpResponseStream(response, request),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode("latin-1", "replace")},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _stale(exc: Exception) -> bool:
    """The error of a request sent on a connection the upstream had already closed (no answer began)."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return True
    return (isinstance(exc, aiohttp.ClientOSError) and not isinstance(exc, aiohttp.ClientConnectorError)
            and getattr(exc, "errno", None) in (errno.ECONNRESET, errno.EPIPE))


def _map_error(exc: Exception, request: httpx2.Request, *, reading: bool) -> Exception:
    """aiohttp's exception as httpx2's (what the core maps to 502/504); anything else unchanged."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx2.ConnectTimeout(message, request=request)
    if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        return httpx2.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx2.ConnectError(message, request=request)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError)):
        return httpx2.RemoteProtocolError(message, request=request)
    if isinstance(exc, aiohttp.ClientOSError):
        return (httpx2.ReadError if reading else httpx2.ConnectError)(message, request=request)
    if isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
        return httpx2.UnsupportedProtocol(message, request=request)
    if isinstance(exc, aiohttp.ClientError):
        return httpx2.NetworkError(message, request=request)
    return exc
