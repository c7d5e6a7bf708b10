"""The upstream client on httpx2's own pool (httpcore): ``[upstream] transport = "httpx2"``.

The reference implementation of :class:`~respan_gateway.upstream.UpstreamClient`, kept selectable as a
fallback and for comparison (``bench/run.py --matrix``); httpx2's ``Response`` is an
:class:`~respan_gateway.upstream.UpstreamResponse` as it stands.
"""

from __future__ import annotations

import functools
import http.cookiejar
from collections.abc import Mapping

import httpx2

from .config import UpstreamSettings
from .upstream import Timeout


@functools.lru_cache(maxsize=1024)
def parsed_url(url: str) -> httpx2.URL:
    """``url`` parsed once: given a string, httpx2 parses it again on every request (about 20 us)."""
    return httpx2.URL(url)


class Httpx2Client:
    def __init__(self, settings: UpstreamSettings) -> None:
        limits = httpx2.Limits(
            max_connections=settings.max_connections,
            # Keep every connection alive: reconnecting under load costs more than idle sockets.
            max_keepalive_connections=settings.max_connections,
            keepalive_expiry=60.0,
        )
        # One client serves every tenant: a cookie a provider sets must never ride along on another
        # tenant's request, so the client's jar accepts none.
        no_cookies = http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        self._client = httpx2.AsyncClient(
            transport=httpx2.AsyncHTTPTransport(limits=limits, retries=0), follow_redirects=False, cookies=no_cookies
        )

    async def send(self, method: str, url: str, headers: Mapping[str, str], body: bytes, timeout: Timeout, *,
                   stream: bool = False) -> httpx2.Response:
        request = self._client.build_request(method, parsed_url(url), content=body, headers=headers,
                                             timeout=httpx2.Timeout(**timeout._asdict()))
        return await self._client.send(request, stream=stream)

    async def aclose(self) -> None:
        await self._client.aclose()
