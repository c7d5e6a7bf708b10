"""Auth: gateway API keys (``Authorization: Bearer <key>`` or ``x-api-key``) mapped to a tenant.

Keys are compared by SHA-256 hash; the config may hold the plain key or only its hash. The caller's
:class:`~respan_gateway.Principal` is put on the call, and the plugin installs the gateway's
authenticator so that other routes (models list, logs API...) authenticate the same way.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Literal

import structlog

from respan_gateway import AuthenticationFailed, Call, CallNext, Principal, Result, Settings, hookimpl
from respan_gateway.config import ConfigError
from respan_gateway.timestamps import parse_iso

log = structlog.get_logger("respan_gateway.auth")


class KeySettings(Settings):
    # The key itself, or its SHA-256 hex digest (prefer the hash in files under review).
    key: str = ""
    key_sha256: str = ""
    tenant: str = "default"
    name: str = ""
    environment: Literal["production", "test"] = "production"
    # ISO 8601 date or date-time (UTC when no zone); after it the key is refused.
    expires_at: str | None = None
    # May sign in to the dashboard (/ui/), which then shows this key's tenant only.
    admin: bool = False


class AuthSettings(Settings):
    keys: list[KeySettings] = []


class _Key:
    __slots__ = ("principal", "expires")

    def __init__(self, principal: Principal, expires: float | None) -> None:
        self.principal, self.expires = principal, expires


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Auth:
    def __init__(self, settings: AuthSettings, gateway: Any) -> None:
        self.keys: dict[str, _Key] = {}
        for i, entry in enumerate(settings.keys):
            digest = entry.key_sha256.lower() or (hash_key(entry.key) if entry.key else "")
            if len(digest) != 64:
                raise ConfigError(f"`auth.keys[{i}]`: give `key` or a 64-hex-digit `key_sha256`")
            principal = Principal(tenant=entry.tenant, key_id=entry.name or digest[:8], environment=entry.environment,
                                  admin=entry.admin)
            self.keys[digest] = _Key(principal, _parse_expiry(entry.expires_at, i))
        if not self.keys:
            log.warning("auth_no_keys", message="the auth plugin has no keys configured: every request will get 401")
        gateway.set_authenticator(self.authenticate)

    async def authenticate(self, headers: Any) -> Principal:
        auth = headers.get("authorization")
        if auth:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthenticationFailed("the Authorization header must be `Bearer <gateway API key>`")
            token = token.strip()
        else:
            token = headers.get("x-api-key", "").strip()
        if not token:
            raise AuthenticationFailed("no API key: send `Authorization: Bearer <gateway API key>`")
        # Looked up by hash: lookup timing says nothing about the key itself.
        entry = self.keys.get(hash_key(token))
        if entry is None:
            raise AuthenticationFailed("your API key is invalid or expired")
        if entry.expires is not None and time.time() >= entry.expires:
            raise AuthenticationFailed("your API key is invalid or expired")
        return entry.principal

    async def __call__(self, call: Call, call_next: CallNext) -> Result:
        call.principal = await self.authenticate(call.headers)
        return await call_next(call)


def _parse_expiry(value: str | None, index: int) -> float | None:
    if not value:
        return None
    try:
        return parse_iso(value)
    except ValueError:
        raise ConfigError(f"`auth.keys[{index}].expires_at`: not an ISO 8601 date: {value!r}") from None


@hookimpl
def register_middlewares(register: Any) -> None:
    register("auth", Auth, order=100, settings=AuthSettings)
