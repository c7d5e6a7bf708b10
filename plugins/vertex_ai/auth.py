"""Google access tokens for Vertex AI: google-auth credentials, refreshed off the event loop and cached.

A :class:`TokenSource` holds one google-auth credential (a service account's, or the application default
credentials) and hands out its access token: cached until ``margin`` seconds before it expires, then
refreshed once, however many requests wait for it (an ``asyncio.Lock``; the refresh itself, which
signs a JWT and calls the token endpoint, runs in a thread through :class:`HttpxRequest`, a
google-auth transport over a small synchronous ``httpx2.Client``). The clock is injectable, so that a
test can move time past a token's expiry.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport
import httpx2

if TYPE_CHECKING:
    from google.oauth2 import service_account

# google.oauth2.service_account (its signers import cryptography, ~0.3 s) is imported where it is first
# used, by a gateway with a Vertex AI provider: every other gateway starts without it.

#: The scope Vertex AI needs.
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


class _Response(google.auth.transport.Response):
    def __init__(self, response: httpx2.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return dict(self._response.headers)

    @property
    def data(self) -> bytes:
        return self._response.content


class HttpxRequest(google.auth.transport.Request):
    """google-auth's transport interface over a synchronous ``httpx2.Client`` (token calls only, in threads)."""

    def __init__(self, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self._client = httpx2.Client(timeout=timeout, follow_redirects=False)

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Mapping[str, str] | None = None,
                 timeout: float | None = None, **kwargs: Any) -> _Response:
        try:
            response = self._client.request(method, url, content=body, headers=dict(headers or {}), timeout=timeout or self.timeout)
        except httpx2.TransportError as exc:
            raise google.auth.exceptions.TransportError(f"{type(exc).__name__}: {exc}") from exc
        return _Response(response)

    def close(self) -> None:
        self._client.close()


class TokenSource:
    """The access tokens of one google-auth credential (see the module doc)."""

    def __init__(self, credentials: google.auth.credentials.Credentials, transport: google.auth.transport.Request,
                 *, margin: float, clock: Callable[[], float] = time.time) -> None:
        self.credentials = credentials
        self.transport = transport
        self.margin = margin
        self.clock = clock
        self.token: str | None = None
        self.expires_at = 0.0
        self._lock = asyncio.Lock()

    def fresh(self) -> bool:
        return self.token is not None and self.clock() < self.expires_at - self.margin

    async def get(self) -> str:
        """A valid access token; raises google-auth's ``RefreshError`` / ``TransportError``."""
        if not self.fresh():
            async with self._lock:
                if not self.fresh():  # another caller may have refreshed it while this one waited
                    await asyncio.to_thread(self._refresh)
        assert self.token is not None
        return self.token

    def invalidate(self, token: str) -> None:
        """Forget ``token`` (the provider refused it): the next caller refreshes."""
        if self.token == token:
            self.token = None

    def _refresh(self) -> None:
        started = self.clock()
        self.credentials.refresh(self.transport)
        expiry = self.credentials.expiry  # naive UTC, as google-auth keeps it
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        lifetime = (expiry - now).total_seconds() if expiry is not None else 3600.0
        self.token, self.expires_at = self.credentials.token, started + lifetime


def service_account_credentials(info: Mapping[str, Any]) -> service_account.Credentials:
    """Credentials of a service-account JSON (already decoded); ValueError when it is not one."""
    if info.get("type") not in (None, "service_account"):
        raise ValueError(f"expected a service-account key (type service_account), not {info.get('type')!r}")
    from google.oauth2 import service_account

    return service_account.Credentials.from_service_account_info(dict(info), scopes=[CLOUD_PLATFORM])


def fingerprint(info: Mapping[str, Any]) -> str:
    """What tells one service-account key from another (its private key, hashed): the cache key."""
    key = f"{info.get('client_email')}\0{info.get('private_key_id')}\0{info.get('private_key')}"
    return hashlib.sha256(key.encode()).hexdigest()


class TokenSources:
    """The :class:`TokenSource` of each service account a request brought, the least recently used dropped
    beyond ``size``."""

    def __init__(self, transport: google.auth.transport.Request, *, margin: float, clock: Callable[[], float] = time.time,
                 size: int = 128) -> None:
        self.transport = transport
        self.margin = margin
        self.size = size
        self.clock = clock
        self._sources: OrderedDict[str, TokenSource] = OrderedDict()

    def get(self, info: Mapping[str, Any]) -> TokenSource:
        key = fingerprint(info)
        source = self._sources.get(key)
        if source is None:
            source = TokenSource(service_account_credentials(info), self.transport, margin=self.margin, clock=self.clock)
            self._sources[key] = source
            while len(self._sources) > self.size:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(key)
        return source

    def tokens(self) -> tuple[str, ...]:
        return tuple(s.token for s in self._sources.values() if s.token)


def default_credentials() -> tuple[google.auth.credentials.Credentials, str | None]:
    """Application default credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud, the metadata server) and
    their project; blocking: call it in a thread."""
    return google.auth.default(scopes=[CLOUD_PLATFORM])
