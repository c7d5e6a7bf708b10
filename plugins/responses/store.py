"""The ``stored_responses`` table: the responses the gateway answered, per tenant, with the
conversation that led to each (what ``previous_response_id`` replays)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import msgspec

from respan_gateway import Target
from respan_gateway.database import Database, Migration

TABLE = "stored_responses"
_CREATE = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
  tenant TEXT NOT NULL,
  id TEXT NOT NULL,
  created_at {{time}} NOT NULL,
  expires_at {{time}},
  provider TEXT,
  account TEXT,
  native {{bool}} NOT NULL,
  response TEXT NOT NULL,
  conversation TEXT NOT NULL,
  PRIMARY KEY (tenant, id)
);
CREATE INDEX IF NOT EXISTS {TABLE}_expiry ON {TABLE} (expires_at)"""
MIGRATIONS = [Migration(1, sqlite=_CREATE.format(time="REAL", bool="INTEGER"),
                        postgres=_CREATE.format(time="DOUBLE PRECISION", bool="BOOLEAN"))]
_UPSERT = (f"INSERT INTO {TABLE} (tenant, id, created_at, expires_at, provider, account, native, response, conversation) "
           "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (tenant, id) DO UPDATE SET "
           "created_at = excluded.created_at, expires_at = excluded.expires_at, provider = excluded.provider, "
           "account = excluded.account, native = excluded.native, response = excluded.response, "
           "conversation = excluded.conversation")
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode


class StoredResponse(msgspec.Struct, kw_only=True):
    """One stored response: the object the client got, who answered it, and the conversation before
    its output (earlier turns and this request's input, as input items; instructions not included)."""

    id: str
    tenant: str
    response: dict[str, Any]
    conversation: list[Any]
    provider: str | None = None
    account: str | None = None
    native: bool = False
    created_at: float = 0.0

    def history(self) -> list[Any]:
        """The items a follow-up request continues from: the conversation, then this response's output."""
        return [*self.conversation, *(self.response.get("output") or [])]


def account_of(target: Target) -> str:
    """Which account of a provider answered: its base URL and the request's own key, if it brought one
    (the configured keys of one provider count as one account), hashed (no key is stored)."""
    raw = f"{target.provider}\0{target.base_url or ''}\0{target.api_key or ''}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


class ResponseStore:
    """Reads and writes stored responses; ``clock`` (seconds since the epoch) decides what has expired."""

    def __init__(self, database: Database, retention_days: float, purge_interval: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = database
        self.retention = retention_days * 86400
        self.purge_interval = purge_interval
        self.clock = clock
        self._purged = float("-inf")

    async def save(self, stored: StoredResponse) -> None:
        now = self.clock()
        expires = now + self.retention if self.retention else None
        await self.db.execute(_UPSERT, stored.tenant, stored.id, now, expires, stored.provider, stored.account,
                              stored.native, _encode(stored.response).decode(), _encode(stored.conversation).decode())
        if now - self._purged >= self.purge_interval:
            await self.purge()

    async def get(self, tenant: str, id: str) -> StoredResponse | None:
        rows = await self.db.fetch(
            f"SELECT * FROM {TABLE} WHERE tenant = $1 AND id = $2 AND (expires_at IS NULL OR expires_at > $3)",
            tenant, id, self.clock())
        if not rows:
            return None
        row = rows[0]
        return StoredResponse(id=row["id"], tenant=row["tenant"], response=_decode(row["response"]),
                              conversation=_decode(row["conversation"]), provider=row["provider"],
                              account=row["account"], native=bool(row["native"]), created_at=row["created_at"])

    async def delete(self, tenant: str, id: str) -> bool:
        return await self.db.execute(f"DELETE FROM {TABLE} WHERE tenant = $1 AND id = $2", tenant, id) > 0

    async def purge(self) -> int:
        """Delete the expired rows; the number deleted."""
        now = self.clock()
        self._purged = now
        return await self.db.execute(f"DELETE FROM {TABLE} WHERE expires_at IS NOT NULL AND expires_at <= $1", now)
