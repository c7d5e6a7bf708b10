"""The keys API: the database keys of the caller's tenant, for admin keys only.

``POST   /api/keys/``        create; the answer holds the full key, the only time it is shown
``GET    /api/keys/``        list (``?include_revoked=true``: revoked ones too)
``GET    /api/keys/{id}/``   one key
``PATCH  /api/keys/{id}/``   ``name``, ``environment``, ``expires_at``, ``limits`` (merged: a limit set to
                             null is removed; ``"limits": null`` removes them all)
``DELETE /api/keys/{id}/``   revoke
``GET    /api/keys/me/``     the calling key as the gateway sees it (any key, admin or not)

A key of another tenant is a 404, as an unknown one. Changes reach this process at once and the other
processes within ``[auth] key_cache_ttl``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import msgspec
import structlog
from msgspec import UNSET, UnsetType
from starlette.requests import Request
from starlette.responses import Response

from respan_gateway import BadRequest, KeyLimits, NotFound, Principal, json_body
from respan_gateway.database import StoreUnavailable
from respan_gateway.errors import PermissionDenied
from respan_gateway.timestamps import parse_iso

from .middleware import KeyStoreUnavailable
from .store import ApiKey, limits_to_api

log = structlog.get_logger("respan_gateway.auth")
_encode = msgspec.json.Encoder().encode
MAX_NAME = 200


class KeyCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str = ""
    environment: Literal["production", "test"] = "production"
    # ISO 8601 (UTC when no zone) or epoch seconds; None = never expires.
    expires_at: str | float | None = None
    limits: dict[str, Any] | None = None
    admin: bool = False


class KeyPatch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str | UnsetType = UNSET
    environment: Literal["production", "test"] | UnsetType = UNSET
    expires_at: str | float | None | UnsetType = UNSET
    limits: dict[str, Any] | None | UnsetType = UNSET


def check_name(name: str) -> str:
    if len(name) > MAX_NAME:
        raise BadRequest(f"`name`: at most {MAX_NAME} characters", param="name")
    return name


def parse_expiry(value: str | float | None, now: float) -> float | None:
    """Epoch seconds of an ``expires_at`` (ISO 8601 or epoch seconds); a time already past is refused
    (a key is stopped by revoking it)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            when = parse_iso(value)
        except ValueError:
            raise BadRequest(f"`expires_at`: not an ISO 8601 date or date-time: {value!r}", param="expires_at") from None
    else:
        when = float(value)
    if not math.isfinite(when) or when <= now:
        raise BadRequest("`expires_at`: must be in the future (to stop a key now, revoke it)", param="expires_at")
    return when


def parse_limits(fields: dict[str, Any] | None, base: KeyLimits | None = None) -> KeyLimits | None:
    """``fields`` merged into ``base`` (a field set to None removes that limit); None when no limit is left."""
    merged = {k: v for k, v in limits_to_api(base).items() if v is not None}
    for name, value in (fields or {}).items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    try:
        limits = msgspec.convert(merged, KeyLimits)
    except msgspec.ValidationError as exc:
        text, _, where = str(exc).partition(" - at `$.")
        field = f"limits.{where.rstrip('`')}" if where else "limits"
        raise BadRequest(f"`{field}`: {text}", param="limits") from None
    for name, value in msgspec.structs.asdict(limits).items():
        if value is not None and (value < 0 or not math.isfinite(value)):
            raise BadRequest(f"`limits.{name}`: must be a number >= 0", param="limits")
    return limits if limits != KeyLimits() else None


def principal_to_api(principal: Principal) -> dict[str, Any]:
    return {"object": "api_key_principal", "key_id": principal.key_id, "tenant": principal.tenant,
            "environment": principal.environment, "admin": principal.admin, "limits": limits_to_api(principal.limits)}


def _json(body: Any, status: int = 200) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json")


def _auth(request: Request) -> Any:
    gateway = request.app.state.gateway
    auth = dict(gateway.middlewares).get("auth")  # this plugin's own middleware
    if auth is None or auth.store is None:
        raise NotFound("the keys API needs the `auth` middleware running")
    return auth


async def _admin(request: Request) -> tuple[Any, Principal]:
    auth = _auth(request)
    principal = await auth.authenticate(request.headers)
    if not principal.admin:
        raise PermissionDenied("the keys API needs an admin key (`admin = true` in [auth] keys, or a key created "
                               "with `admin: true`)", code="admin_key_required")
    return auth, principal


def _store_down(exc: StoreUnavailable) -> Exception:
    log.warning("keys_api_store_unavailable", error=str(exc))
    return KeyStoreUnavailable("the keys database is unreachable; retry shortly", headers={"retry-after": "1"})


async def _one(auth: Any, principal: Principal, key_id: str) -> ApiKey:
    key = await auth.store.get(key_id, principal.tenant)
    if key is None:
        raise NotFound(f"no API key `{key_id}` in your tenant")
    return key


async def keys(request: Request) -> Response:
    auth, principal = await _admin(request)
    try:
        if request.method == "GET":
            include = request.query_params.get("include_revoked", "").lower() in ("1", "true", "yes")
            found = await auth.store.list(principal.tenant, include_revoked=include)
            now = auth.clock()
            return _json({"object": "list", "results": [k.to_api(now) for k in found], "count": len(found)})
        body: KeyCreate = await json_body(request, KeyCreate)
        now = auth.clock()
        key, plain = await auth.store.create(
            tenant=principal.tenant, name=check_name(body.name), environment=body.environment,
            expires_at=parse_expiry(body.expires_at, now), limits=parse_limits(body.limits), admin=body.admin)
    except StoreUnavailable as exc:
        raise _store_down(exc) from None
    log.info("api_key_created", tenant=key.tenant, key_id=key.id, prefix=key.prefix, admin=key.admin,
             by=principal.key_id)
    return _json({**key.to_api(now), "key": plain}, status=201)


async def one_key(request: Request) -> Response:
    auth, principal = await _admin(request)
    key_id = request.path_params["key_id"]
    try:
        key = await _one(auth, principal, key_id)
        if request.method == "PATCH":
            body: KeyPatch = await json_body(request, KeyPatch)
            changes: dict[str, Any] = {}
            if body.name is not UNSET:
                changes["name"] = check_name(body.name)
            if body.environment is not UNSET:
                changes["environment"] = body.environment
            if body.expires_at is not UNSET:
                changes["expires_at"] = parse_expiry(body.expires_at, auth.clock())
            if body.limits is not UNSET:
                changes["limits"] = None if body.limits is None else parse_limits(body.limits, key.limits)
            if changes:
                key = await auth.store.update(key, **changes)
                auth.forget(key.key_sha256)
                log.info("api_key_updated", tenant=key.tenant, key_id=key.id, fields=sorted(changes), by=principal.key_id)
        elif request.method == "DELETE":
            key = await auth.store.revoke(key)
            auth.forget(key.key_sha256)
            log.info("api_key_revoked", tenant=key.tenant, key_id=key.id, prefix=key.prefix, by=principal.key_id)
    except StoreUnavailable as exc:
        raise _store_down(exc) from None
    return _json(key.to_api(auth.clock()))


async def me(request: Request) -> Response:
    auth = _auth(request)
    return _json(principal_to_api(await auth.authenticate(request.headers)))


ROUTES = [
    ("/api/keys/", keys, ["GET", "POST"]),
    ("/api/keys", keys, ["GET", "POST"]),
    ("/api/keys/me/", me, ["GET"]),
    ("/api/keys/me", me, ["GET"]),
    ("/api/keys/{key_id}/", one_key, ["GET", "PATCH", "DELETE"]),
    ("/api/keys/{key_id}", one_key, ["GET", "PATCH", "DELETE"]),
]
