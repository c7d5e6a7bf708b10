"""The one shared upstream HTTP client of a process, and how its failures become gateway errors.

Adapters speak httpx's API (``httpx2.AsyncClient``). What carries the bytes is a transport, an
interface with one method (``handle_async_request``), chosen in the config (``[upstream] transport``)
so that the benchmark can compare transports without touching an adapter.
"""

from __future__ import annotations

import email.utils
import http.cookiejar
import functools
import time
from collections.abc import Callable

import httpx2

from .config import UpstreamSettings
from .errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable

TransportFactory = Callable[[UpstreamSettings], httpx2.AsyncBaseTransport]


def _httpx2_transport(settings: UpstreamSettings) -> httpx2.AsyncBaseTransport:
    limits = httpx2.Limits(
        max_connections=settings.max_connections,
        # Keep every connection alive: reconnecting under load costs more than idle sockets.
        max_keepalive_connections=settings.max_connections,
        keepalive_expiry=60.0,
    )
    return httpx2.AsyncHTTPTransport(limits=limits, retries=0)


def _aiohttp_transport(settings: UpstreamSettings) -> httpx2.AsyncBaseTransport:
    from .aiohttp_transport import AiohttpTransport  # imported only when chosen

    return AiohttpTransport(settings)


TRANSPORTS: dict[str, TransportFactory] = {"httpx2": _httpx2_transport, "aiohttp": _aiohttp_transport}


def timeout_for(settings: UpstreamSettings, connect: float | None = None, read: float | None = None) -> httpx2.Timeout:
    return httpx2.Timeout(
        connect=connect if connect is not None else settings.connect_timeout,
        read=read if read is not None else settings.read_timeout,
        write=settings.write_timeout,
        pool=settings.pool_timeout,
    )


def create_client(settings: UpstreamSettings) -> httpx2.AsyncClient:
    try:
        factory = TRANSPORTS[settings.transport]
    except KeyError:
        from .config import ConfigError

        raise ConfigError(
            f"`upstream.transport`: unknown transport {settings.transport!r} (known: {', '.join(sorted(TRANSPORTS))})"
        ) from None
    # One client serves every tenant: a cookie a provider sets must never ride along on another
    # tenant's request, so the client's jar accepts none.
    no_cookies = http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return httpx2.AsyncClient(
        transport=factory(settings), timeout=timeout_for(settings), follow_redirects=False, cookies=no_cookies
    )


@functools.lru_cache(maxsize=1024)
def parsed_url(url: str) -> httpx2.URL:
    """``url`` parsed once: given a string, httpx2 parses it again on every request (about 20 us)."""
    return httpx2.URL(url)


def transport_error(exc: httpx2.TransportError, provider: str) -> UpstreamError:
    """Map a transport failure to 504 (timeouts) or 502 (everything else). Secrets in the text are
    taken out by ``Gateway.dispatch``, as for every error of an adapter."""
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, httpx2.TimeoutException):
        return UpstreamTimeout(f"provider `{provider}` did not answer in time ({detail})", provider=provider)
    return UpstreamUnreachable(f"could not reach provider `{provider}` ({detail})", provider=provider)


def parse_retry_after(headers: httpx2.Headers) -> float | None:
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
