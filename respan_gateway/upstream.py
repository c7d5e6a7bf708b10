"""The one shared upstream HTTP client of a process, and how its failures become gateway errors.

Adapters send through one small interface, :class:`UpstreamClient`: one method, :meth:`~UpstreamClient.send`
(method, URL, headers, body bytes, timeouts) answering an :class:`UpstreamResponse` (status, headers,
the body whole or chunk by chunk). Adapters call it through :meth:`ProviderAdapter.send
<respan_gateway.providers.ProviderAdapter.send>`. Two clients implement it, chosen in the config
(``[upstream] transport``) so that the benchmark can compare them without touching an adapter:

- ``aiohttp`` (default, :mod:`respan_gateway.aiohttp_client`): straight on aiohttp's connection pool,
  no request or response objects of another library per call;
- ``httpx2`` (:mod:`respan_gateway.httpx2_client`): httpx2's own httpcore pool, kept as the reference and
  the fallback (6-8x the CPU per request, ``docs/performance.md``).

Failures are raised as httpx2's exceptions (:data:`TransportError` and its subclasses: ``ConnectTimeout``,
``ReadTimeout``, ``ConnectError``, ``ReadError``, ``RemoteProtocolError``...) by both clients: one
vocabulary, which :func:`transport_error` maps to 504 (timeouts) and 502 (the rest).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import NamedTuple, Protocol

import httpx2

from .config import UpstreamSettings
from .errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable

#: What every upstream client raises for a failure of the exchange (connect, timeout, reset, cut body).
TransportError = httpx2.TransportError


class Timeout(NamedTuple):
    """Seconds (None: no bound). ``connect``: the TCP/TLS connect; ``read``: each read (the first byte and
    every gap between chunks); ``write``: each write (httpx2 only, aiohttp has none); ``pool``: the wait
    for a free connection of the pool."""

    connect: float | None
    read: float | None
    write: float | None
    pool: float | None


class UpstreamResponse(Protocol):
    """An answer of :meth:`UpstreamClient.send` (httpx2's ``Response`` is one).

    ``headers`` is case-insensitive (``headers.get("content-type", "")``). Unless the request was sent
    with ``stream=True``, the body is already read: ``content``. A streamed body is read with
    ``aiter_bytes()`` (each piece as it arrives; a failure or an early end raises :data:`TransportError`)
    and the response must be closed with ``aclose()`` (before its end, that closes the connection).
    """

    status_code: int
    headers: Mapping[str, str]

    @property
    def content(self) -> bytes: ...

    def aiter_bytes(self) -> AsyncIterator[bytes]: ...

    async def aread(self) -> bytes: ...

    async def aclose(self) -> None: ...


class UpstreamClient(Protocol):
    """The interface every upstream client implements; one instance (one pool) per process."""

    async def send(self, method: str, url: str, headers: Mapping[str, str], body: bytes, timeout: Timeout, *,
                   stream: bool = False) -> UpstreamResponse:
        """Send one request. ``url`` is encoded as httpx2 encodes it (an escape such as ``%3A`` is kept:
        AWS SigV4 signs the path as sent). No redirect is followed and no cookie kept: one client serves
        every tenant. ``content-length`` is computed from ``body``."""
        ...

    async def aclose(self) -> None: ...


ClientFactory = Callable[[UpstreamSettings], UpstreamClient]


def _aiohttp_client(settings: UpstreamSettings) -> UpstreamClient:
    from .aiohttp_client import AiohttpClient

    return AiohttpClient(settings)


def _httpx2_client(settings: UpstreamSettings) -> UpstreamClient:
    from .httpx2_client import Httpx2Client  # imported only when chosen

    return Httpx2Client(settings)


TRANSPORTS: dict[str, ClientFactory] = {"aiohttp": _aiohttp_client, "httpx2": _httpx2_client}


def create_client(settings: UpstreamSettings) -> UpstreamClient:
    try:
        factory = TRANSPORTS[settings.transport]
    except KeyError:
        from .config import ConfigError

        raise ConfigError(
            f"`upstream.transport`: unknown transport {settings.transport!r} (known: {', '.join(sorted(TRANSPORTS))})"
        ) from None
    return factory(settings)


def timeout_for(settings: UpstreamSettings, connect: float | None = None, read: float | None = None) -> Timeout:
    return Timeout(
        connect=connect if connect is not None else settings.connect_timeout,
        read=read if read is not None else settings.read_timeout,
        write=settings.write_timeout,
        pool=settings.pool_timeout,
    )


def transport_error(exc: TransportError, provider: str) -> UpstreamError:
    """Map a transport failure to 504 (timeouts) or 502 (everything else). Secrets in the text are
    taken out by ``Gateway.dispatch``, as for every error of an adapter."""
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, httpx2.TimeoutException):
        return UpstreamTimeout(f"provider `{provider}` did not answer in time ({detail})", provider=provider)
    return UpstreamUnreachable(f"could not reach provider `{provider}` ({detail})", provider=provider)


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
