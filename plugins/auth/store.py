"""The ``api_keys`` table: gateway API keys issued through the keys API or the CLI.

A key reads ``rsp_<8 characters>.<40 characters>``: the part before the dot is its **prefix**, stored
plain (shown in lists, so that an operator recognises a key); the whole key is stored only as its
SHA-256 hash (a key is 238 random bits: a fast hash is enough, no salt or slow hash needed) and shown
once, when it is created. A revoked key keeps its row (``revoked_at``), for the record.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import string
import time
import uuid
from typing import Any, Literal

import msgspec

from respan_gateway import KeyLimits, Principal
from respan_gateway.database import Database, Migration

TABLE = "api_keys"
KEY_PREFIX = "rsp_"
_ALPHABET = string.ascii_letters + string.digits
_PREFIX_CHARS = 8
_SECRET_CHARS = 40
#: What a key issued here looks like; any other token is not looked up in the database.
KEY_FORMAT = re.compile(rf"^{KEY_PREFIX}[A-Za-z0-9]{{{_PREFIX_CHARS}}}\.[A-Za-z0-9]{{{_SECRET_CHARS}}}$")

Environment = Literal["production", "test"]


def _create(dialect: str) -> str:
    real = "DOUBLE PRECISION" if dialect == "postgres" else "REAL"
    boolean = "BOOLEAN" if dialect == "postgres" else "INTEGER"
    return f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
  id TEXT PRIMARY KEY,
  prefix TEXT NOT NULL UNIQUE,
  key_sha256 TEXT NOT NULL UNIQUE,
  tenant TEXT NOT NULL,
  name TEXT NOT NULL,
  environment TEXT NOT NULL,
  admin {boolean} NOT NULL,
  limits TEXT,
  created_at {real} NOT NULL,
  expires_at {real},
  revoked_at {real}
);
CREATE INDEX IF NOT EXISTS {TABLE}_tenant_created ON {TABLE} (tenant, created_at)
"""


MIGRATIONS = [Migration(1, sqlite=_create("sqlite"), postgres=_create("postgres"))]

_COLUMNS = "id, prefix, key_sha256, tenant, name, environment, admin, limits, created_at, expires_at, revoked_at"
_encode = msgspec.json.Encoder().encode
_decode_limits = msgspec.json.Decoder(KeyLimits).decode


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """(the full key, its prefix): ``rsp_<8>.<40>`` from the system's CSPRNG."""
    prefix = KEY_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(_PREFIX_CHARS))
    secret = "".join(secrets.choice(_ALPHABET) for _ in range(_SECRET_CHARS))
    return f"{prefix}.{secret}", prefix


class ApiKey(msgspec.Struct, kw_only=True, frozen=True):
    """One stored key (never its secret)."""

    id: str
    prefix: str
    key_sha256: str
    tenant: str
    name: str
    environment: Environment
    admin: bool
    limits: KeyLimits | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def principal(self) -> Principal:
        return Principal(tenant=self.tenant, key_id=self.id, environment=self.environment, admin=self.admin,
                         limits=self.limits)

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def to_api(self, now: float | None = None) -> dict[str, Any]:
        """The key as the keys API and the CLI show it."""
        return {
            "id": self.id, "object": "api_key", "prefix": self.prefix, "name": self.name, "tenant": self.tenant,
            "environment": self.environment, "admin": self.admin, "limits": limits_to_api(self.limits),
            "created_at": iso(self.created_at), "expires_at": iso(self.expires_at), "revoked_at": iso(self.revoked_at),
            "status": self.status(time.time() if now is None else now),
        }


def limits_to_api(limits: KeyLimits | None) -> dict[str, Any]:
    """Every limit field, None where unset."""
    return msgspec.structs.asdict(limits if limits is not None else KeyLimits())


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _row(row: dict[str, Any]) -> ApiKey:
    raw = row["limits"]
    return ApiKey(
        id=row["id"], prefix=row["prefix"], key_sha256=row["key_sha256"], tenant=row["tenant"], name=row["name"],
        environment=row["environment"], admin=bool(row["admin"]),
        limits=_decode_limits(raw) if raw else None,
        created_at=float(row["created_at"]),
        expires_at=float(row["expires_at"]) if row["expires_at"] is not None else None,
        revoked_at=float(row["revoked_at"]) if row["revoked_at"] is not None else None,
    )


def _limits_text(limits: KeyLimits | None) -> str | None:
    # No limits set is stored as NULL: a key without limits gives the limits plugin nothing to count.
    if limits is None or limits == KeyLimits():
        return None
    return _encode(limits).decode()


class ApiKeyStore:
    """The keys of every tenant; each method raises ``StoreUnavailable`` when the database is down."""

    def __init__(self, database: Database) -> None:
        self.db = database

    async def create(self, *, tenant: str, name: str = "", environment: Environment = "production",
                     expires_at: float | None = None, limits: KeyLimits | None = None, admin: bool = False,
                     now: float | None = None) -> tuple[ApiKey, str]:
        """A new key: (its stored form, the full key, which nobody can read again)."""
        plain, prefix = new_key()
        key = ApiKey(id=str(uuid.uuid4()), prefix=prefix, key_sha256=hash_key(plain), tenant=tenant, name=name,
                     environment=environment, admin=admin, limits=limits if limits != KeyLimits() else None,
                     created_at=time.time() if now is None else now, expires_at=expires_at, revoked_at=None)
        await self.db.execute(
            f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            key.id, key.prefix, key.key_sha256, key.tenant, key.name, key.environment, key.admin,
            _limits_text(key.limits), key.created_at, key.expires_at, key.revoked_at,
        )
        return key, plain

    async def by_hash(self, key_sha256: str) -> ApiKey | None:
        """The key with this hash (revoked or not), for authentication."""
        rows = await self.db.fetch(f"SELECT {_COLUMNS} FROM {TABLE} WHERE key_sha256 = $1", key_sha256)
        return _row(rows[0]) if rows else None

    async def get(self, key_id: str, tenant: str | None = None) -> ApiKey | None:
        """The key ``key_id``; None when there is none, or it belongs to another tenant than ``tenant``."""
        if tenant is None:
            rows = await self.db.fetch(f"SELECT {_COLUMNS} FROM {TABLE} WHERE id = $1", key_id)
        else:
            rows = await self.db.fetch(f"SELECT {_COLUMNS} FROM {TABLE} WHERE id = $1 AND tenant = $2", key_id, tenant)
        return _row(rows[0]) if rows else None

    async def list(self, tenant: str | None = None, *, include_revoked: bool = False) -> list[ApiKey]:
        """The keys of ``tenant`` (every tenant's when None), newest first."""
        where, args = [], []
        if tenant is not None:
            args.append(tenant)
            where.append(f"tenant = ${len(args)}")
        if not include_revoked:
            where.append("revoked_at IS NULL")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self.db.fetch(f"SELECT {_COLUMNS} FROM {TABLE}{clause} ORDER BY created_at DESC, id", *args)
        return [_row(r) for r in rows]

    async def update(self, key: ApiKey, **changes: Any) -> ApiKey:
        """Store ``changes`` (name, environment, expires_at, limits) of ``key``; the key as it is now."""
        updated = msgspec.structs.replace(key, **changes)
        await self.db.execute(
            f"UPDATE {TABLE} SET name = $2, environment = $3, expires_at = $4, limits = $5 WHERE id = $1",
            key.id, updated.name, updated.environment, updated.expires_at, _limits_text(updated.limits),
        )
        return updated

    async def revoke(self, key: ApiKey, now: float | None = None) -> ApiKey:
        """Revoke ``key`` (once: revoking again keeps the first time)."""
        if key.revoked_at is not None:
            return key
        when = time.time() if now is None else now
        await self.db.execute(f"UPDATE {TABLE} SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL", key.id, when)
        return msgspec.structs.replace(key, revoked_at=when)
