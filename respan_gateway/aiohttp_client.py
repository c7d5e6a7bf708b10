"""The upstream client straight on aiohttp: ``[upstream] transport = "aiohttp"`` (the default).

An :class:`~respan_gateway.upstream.UpstreamClient` on one aiohttp session (one connection pool) per
process. aiohttp's pool costs far less CPU per request under concurrency than httpcore's, and nothing
of another HTTP library is built per call (figures in ``docs/performance.md``). Its contract:

- the URL is encoded as httpx2 encodes it (parsed once per distinct URL) and sent as encoded: yarl
  would otherwise normalise the path (``%3A`` to ``:``), and a signed request (AWS SigV4 signs the
  path) must reach the provider byte for byte as it was signed;
- no redirect is followed, no cookie kept (one client serves every tenant), no proxy or netrc taken
  from the environment; aiohttp's default ``Accept-Encoding`` is sent and the body decoded;
- a streamed body is handed on piece by piece as aiohttp has it, nothing is buffered; an early end
  (a cut connection, a truncated chunked body) raises;
- closing a response before its end closes that connection (aiohttp's ``release()`` does);
- a pooled connection the upstream closed while idle is sent on once more, before any answer byte;
- failures are raised as httpx2's exceptions (``ConnectTimeout``, ``ReadTimeout``, ``ConnectError``,
  ``ReadError``, ``RemoteProtocolError``), which the core maps to 504 for timeouts and 502 for the rest.

Timeouts: ``connect`` bounds the TCP/TLS connect, ``pool`` is added to it (aiohttp's ``connect``
includes the wait for a free connection), ``read`` bounds each read. aiohttp has no write timeout;
``write`` is not applied.
"""

from __future__ import annotations

import asyncio
import errno
import functools
from collections.abc import AsyncIterator, Mapping

import aiohttp
import httpx2
import yarl
from multidict import CIMultiDictProxy

from .config import UpstreamSettings
from .deadline import Deadline
from .upstream import Timeout

# aiohttp adds these itself unless told not to; adapters set their content type.
_SKIP_AUTO_HEADERS = frozenset({"Content-Type"})


@functools.lru_cache(maxsize=1024)
def _url(url: str) -> yarl.URL:
    # httpx2's encoding (the one every adapter and the credentials plugin's check were written against),
    # then taken by yarl as it stands.
    return yarl.URL(str(httpx2.URL(url)), encoded=True)


class AiohttpResponse:
    """An :class:`~respan_gateway.upstream.UpstreamResponse` on aiohttp's response."""

    __slots__ = ("status_code", "headers", "_content", "_response", "_deadline")

    def __init__(self, response: aiohttp.ClientResponse, content: bytes | None = None) -> None:
        self.status_code: int = response.status
        self.headers: CIMultiDictProxy[str] = response.headers
        self._content = content
        self._response = response
        self._deadline: _ReadDeadline | None = None

    @property
    def content(self) -> bytes:
        if self._content is None:
            raise httpx2.ResponseNotRead()
        return self._content

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        if self._content is not None:
            if self._content:
                yield self._content
            return
        reader = self._response.content
        connection = self._response.connection
        protocol = connection.protocol if connection is not None else None
        timeout = protocol.read_timeout if protocol is not None else None
        if not timeout:
            while True:
                try:
                    piece = await reader.readany()
                except Exception as exc:
                    raise _map_error(exc, reading=True) from exc
                if not piece:
                    return
                yield piece
        # aiohttp would cancel its read timer and start a new one at every piece received: one deadline
        # per wait instead, watched by one timer that moves only when it fires early.
        assert protocol is not None
        protocol.read_timeout = None  # from the next piece received on (the timer of the last one runs out as it would)
        loop = asyncio.get_running_loop()
        deadline = self._deadline = _ReadDeadline(loop, reader)
        try:
            while True:
                deadline.arm(loop.time() + timeout)
                try:
                    piece = await reader.readany()
                except Exception as exc:
                    raise _map_error(exc, reading=True) from exc
                finally:
                    deadline.until = None
                if not piece:
                    return
                yield piece
        finally:
            deadline.close()

    async def aread(self) -> bytes:
        if self._content is None:
            try:
                self._content = await self._response.read()
            except Exception as exc:
                raise _map_error(exc, reading=True) from exc
            finally:
                self._response.release()
        return self._content

    async def aclose(self) -> None:
        # Returns the connection to the pool when the body was read to its end, closes it otherwise.
        if self._deadline is not None:
            self._deadline.close()
        self._response.release()


class _ReadDeadline(Deadline):
    """The read timeout of a streamed body: each wait for a piece lasts at most the timeout, then the
    reader raises what aiohttp's own ``sock_read`` timeout raises."""

    __slots__ = ("reader",)

    def __init__(self, loop: asyncio.AbstractEventLoop, reader: aiohttp.StreamReader) -> None:
        super().__init__(loop)
        self.reader = reader

    def expire(self) -> None:
        self.reader.set_exception(aiohttp.SocketTimeoutError("Timeout on reading data from socket"))


class AiohttpClient:
    """One aiohttp session (one connection pool) per process, created on first use in the running loop."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[Timeout, aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._settings.max_connections,
            limit_per_host=0,
            # Keep connections alive as long as the httpx2 client does (60 s).
            keepalive_timeout=60.0,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None),
            skip_auto_headers=_SKIP_AUTO_HEADERS,
        )
        return self._session

    def _timeout(self, spec: Timeout) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(spec)
        if timeout is None:
            connect, read, _, pool = spec
            timeout = aiohttp.ClientTimeout(
                total=None,
                connect=None if connect is None or pool is None else connect + pool,
                sock_connect=connect,
                sock_read=read,
            )
            if len(self._timeouts) < 256:  # per-request timeouts vary little; bound the cache anyway
                self._timeouts[spec] = timeout
        return timeout

    async def send(self, method: str, url: str, headers: Mapping[str, str], body: bytes, timeout: Timeout, *,
                   stream: bool = False) -> AiohttpResponse:
        session = self._session or self._open()
        target = _url(url)
        limits = self._timeout(timeout)
        for attempt in (1, 2):
            try:
                response = await session.request(method, target, headers=headers, data=body or None,
                                                 allow_redirects=False, timeout=limits)
                break
            except Exception as exc:
                # A pooled connection the upstream closed while it sat idle (its keep-alive ran out first)
                # fails as soon as it is written to or read, before any answer: send once more, on a new
                # connection, as httpcore does for a stale connection. Not for timeouts or refused connects.
                if attempt == 1 and _stale(exc):
                    continue
                raise _map_error(exc, reading=False) from exc
        if stream:
            return AiohttpResponse(response)
        try:
            content = await response.read()
        except Exception as exc:
            raise _map_error(exc, reading=True) from exc
        finally:
            response.release()
        return AiohttpResponse(response, content)

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


def _map_error(exc: Exception, *, reading: bool) -> Exception:
    """aiohttp's exception as httpx2's (what the core maps to 502/504); anything else unchanged."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx2.ConnectTimeout(message)
    if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        return httpx2.ReadTimeout(message)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx2.ConnectError(message)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError)):
        return httpx2.RemoteProtocolError(message)
    if isinstance(exc, aiohttp.ClientOSError):
        return (httpx2.ReadError if reading else httpx2.ConnectError)(message)
    if isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
        return httpx2.UnsupportedProtocol(message)
    if isinstance(exc, aiohttp.ClientError):
        return httpx2.NetworkError(message)
    return exc
