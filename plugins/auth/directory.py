"""The ``ApiKeyDirectory`` service (respan_gateway.hookspecs): a tenant's keys for other plugins (the
dashboard), without their secrets. Creating and revoking go through the same store calls, checks and
cache invalidation as the keys API."""

from __future__ import annotations

from typing import Any, Literal

import structlog

from respan_gateway.database import StoreUnavailable

from .api import check_name, parse_expiry
from .middleware import Auth
from .store import iso, limits_to_api

log = structlog.get_logger("respan_gateway.auth")


class KeyDirectory:
    def __init__(self, auth: Auth) -> None:
        self.auth = auth

    def _config_keys(self, tenant: str) -> list[dict[str, Any]]:
        now = self.auth.clock()
        out = []
        for entry in self.auth.keys.values():
            p = entry.principal
            if p.tenant != tenant:
                continue
            out.append({
                "id": p.key_id, "object": "api_key", "prefix": None, "name": p.key_id, "tenant": p.tenant,
                "environment": p.environment, "admin": p.admin, "limits": limits_to_api(p.limits),
                "created_at": None, "expires_at": iso(entry.expires), "revoked_at": None,
                "status": "expired" if entry.expires is not None and now >= entry.expires else "active",
                "source": "config",
            })
        return sorted(out, key=lambda k: k["id"])

    async def list(self, tenant: str, *, include_revoked: bool = False) -> list[dict[str, Any]]:
        stored = []
        if self.auth.store is not None:
            now = self.auth.clock()
            stored = [{**k.to_api(now), "source": "database"}
                      for k in await self.auth.store.list(tenant, include_revoked=include_revoked)]
        return self._config_keys(tenant) + stored

    async def create(self, tenant: str, *, name: str, environment: Literal["production", "test"] = "production",
                     expires_at: float | None = None, by: str | None = None) -> tuple[dict[str, Any], str]:
        store = self._store()
        now = self.auth.clock()
        # The keys API's checks (check_name, parse_expiry): one way to validate a key.
        key, plain = await store.create(tenant=tenant, name=check_name(name), environment=environment,
                                        expires_at=parse_expiry(expires_at, now))
        log.info("api_key_created", tenant=key.tenant, key_id=key.id, prefix=key.prefix, admin=False, by=by)
        return {**key.to_api(now), "source": "database"}, plain

    async def revoke(self, tenant: str, key_id: str, *, by: str | None = None) -> dict[str, Any] | None:
        store = self._store()
        key = await store.get(key_id, tenant)
        if key is None:
            return None
        key = await store.revoke(key)
        self.auth.forget(key.key_sha256)
        log.info("api_key_revoked", tenant=key.tenant, key_id=key.id, prefix=key.prefix, by=by)
        return {**key.to_api(self.auth.clock()), "source": "database"}

    def _store(self) -> Any:
        if self.auth.store is None:
            raise StoreUnavailable("the keys store has no database ([database] url)")
        return self.auth.store
