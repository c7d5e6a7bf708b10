"""The ``customers`` store: customers and the usage totals of customers and keys, in the gateway's database.

Two tables (SQLite or PostgreSQL, ``register_stores``):

- ``customers``: one row per (tenant, customer_identifier): profile (email, name, group) and budget
  fields (``customer_params``), upserted from the calls and changed by the users API.
- ``limit_usage``: lifetime totals per (tenant, scope, subject), ``scope`` being ``customer`` or
  ``key``: spend (USD, a customer's with markup), cost (USD at provider prices), requests and tokens,
  first and last seen. The observer adds to them in batches (``ON CONFLICT DO UPDATE``: every
  replica adds its own deltas). They feed the users API and seed the lifetime counters.

Writes never happen on the request path: :class:`UsageWriter` queues upserts and deltas and writes
them every ``flush_interval`` seconds (and at shutdown); a store that is down keeps them for the next
round (bounded). Reads of a customer happen once per ``customer_cache_ttl`` per process.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import structlog

from respan_gateway.database import Database, Migration, RowRejected, StoreUnavailable

log = structlog.get_logger("respan_gateway.limits")

#: The budget and profile fields of a customer (the users API's names), with their SQL kinds.
PROFILE_FIELDS = {"email": "text", "name": "text", "group_identifier": "text", "metadata": "json"}
BUDGET_FIELDS = {"period_budget": "float", "budget_duration": "text", "period_start": "text", "period_end": "text",
                 "total_budget": "float", "markup_percentage": "float", "rate_limit": "int"}
CUSTOMER_FIELDS = {**PROFILE_FIELDS, **BUDGET_FIELDS}
USAGE_FIELDS = ("spend", "cost", "requests", "prompt_tokens", "completion_tokens")

_TYPES = {
    "sqlite": {"text": "TEXT", "float": "REAL", "int": "INTEGER", "json": "TEXT", "time": "REAL"},
    "postgres": {"text": "TEXT", "float": "DOUBLE PRECISION", "int": "BIGINT", "json": "TEXT", "time": "DOUBLE PRECISION"},
}


def _create(dialect: str) -> str:
    t = _TYPES[dialect]
    fields = ",\n  ".join(f"{name} {t[kind]}" for name, kind in CUSTOMER_FIELDS.items())
    return f"""
CREATE TABLE IF NOT EXISTS customers (
  tenant TEXT NOT NULL,
  customer_identifier TEXT NOT NULL,
  {fields},
  created_at {t['time']} NOT NULL,
  updated_at {t['time']} NOT NULL,
  PRIMARY KEY (tenant, customer_identifier)
);
CREATE TABLE IF NOT EXISTS limit_usage (
  tenant TEXT NOT NULL,
  scope TEXT NOT NULL,
  subject TEXT NOT NULL,
  spend {t['float']} NOT NULL DEFAULT 0,
  cost {t['float']} NOT NULL DEFAULT 0,
  requests {t['int']} NOT NULL DEFAULT 0,
  prompt_tokens {t['int']} NOT NULL DEFAULT 0,
  completion_tokens {t['int']} NOT NULL DEFAULT 0,
  first_seen {t['time']},
  last_active {t['time']},
  PRIMARY KEY (tenant, scope, subject)
)"""


MIGRATIONS = [Migration(1, sqlite=_create("sqlite"), postgres=_create("postgres"))]

_NAMES = list(CUSTOMER_FIELDS)
# A call's upsert: only the fields the call gave (the others are NULL and COALESCE keeps what is
# stored), so a replica whose cache is stale never undoes a users API PATCH made elsewhere.
_UPSERT = (
    f"INSERT INTO customers (tenant, customer_identifier, {', '.join(_NAMES)}, created_at, updated_at) "
    f"VALUES ($1, $2, {', '.join(f'${i + 3}' for i in range(len(_NAMES)))}, ${len(_NAMES) + 3}, ${len(_NAMES) + 3}) "
    "ON CONFLICT (tenant, customer_identifier) DO UPDATE SET "
    + ", ".join(f"{n} = COALESCE(excluded.{n}, customers.{n})" for n in _NAMES)
    + ", updated_at = excluded.updated_at"
)
_ADD_USAGE = (
    "INSERT INTO limit_usage (tenant, scope, subject, spend, cost, requests, prompt_tokens, completion_tokens, "
    "first_seen, last_active) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) "
    "ON CONFLICT (tenant, scope, subject) DO UPDATE SET spend = limit_usage.spend + excluded.spend, "
    "cost = limit_usage.cost + excluded.cost, requests = limit_usage.requests + excluded.requests, "
    "prompt_tokens = limit_usage.prompt_tokens + excluded.prompt_tokens, "
    "completion_tokens = limit_usage.completion_tokens + excluded.completion_tokens, "
    "last_active = excluded.last_active"
)
_SELECT = (
    "SELECT c.*, u.spend, u.cost, u.requests, u.prompt_tokens, u.completion_tokens, u.first_seen, u.last_active "
    "FROM customers c LEFT JOIN limit_usage u ON u.tenant = c.tenant AND u.scope = 'customer' "
    "AND u.subject = c.customer_identifier"
)
#: Sort keys of the users list, as the API names them -> SQL.
SORTS = {
    "customer_identifier": "c.customer_identifier", "name": "c.name", "email": "c.email",
    "first_seen": "COALESCE(u.first_seen, c.created_at)", "created_at": "c.created_at", "updated_at": "c.updated_at",
    "last_active_timeframe": "COALESCE(u.last_active, c.updated_at)",
    "total_usage": "COALESCE(u.spend, 0)", "total_cost": "COALESCE(u.cost, 0)",
    "total_requests": "COALESCE(u.requests, 0)", "number_of_requests": "COALESCE(u.requests, 0)",
    "total_tokens": "COALESCE(u.prompt_tokens, 0) + COALESCE(u.completion_tokens, 0)",
}
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode


def _to_db(name: str, value: Any) -> Any:
    if value is None:
        return None
    if CUSTOMER_FIELDS[name] == "json":
        return _encode(value).decode()
    return value


class CustomerStore:
    """SQL of the two tables."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, tenant: str, identifier: str) -> dict[str, Any] | None:
        rows = await self.db.fetch(f"{_SELECT} WHERE c.tenant = $1 AND c.customer_identifier = $2", tenant, identifier)
        return self._row(rows[0]) if rows else None

    async def list(self, tenant: str, page: int, page_size: int, sort_by: str) -> tuple[int, list[dict[str, Any]]]:
        desc = sort_by.startswith("-")
        name = sort_by.lstrip("-+")
        if name not in SORTS:
            raise ValueError(f"cannot sort by `{sort_by}` (known: {', '.join(sorted(SORTS))})")
        direction = "DESC" if desc else "ASC"
        total = await self.db.fetchval("SELECT COUNT(*) FROM customers WHERE tenant = $1", tenant)
        rows = await self.db.fetch(
            f"{_SELECT} WHERE c.tenant = $1 ORDER BY {SORTS[name]} {direction}, c.customer_identifier {direction} "
            "LIMIT $2 OFFSET $3", tenant, page_size, (page - 1) * page_size)
        return int(total or 0), [self._row(r) for r in rows]

    async def usage(self, tenant: str, scope: str, subject: str) -> dict[str, Any] | None:
        rows = await self.db.fetch("SELECT * FROM limit_usage WHERE tenant = $1 AND scope = $2 AND subject = $3",
                                   tenant, scope, subject)
        return rows[0] if rows else None

    async def upsert(self, rows: list[tuple[str, str, dict[str, Any]]]) -> None:
        now = time.time()
        await self.db.executemany(_UPSERT, [
            (tenant, identifier, *(_to_db(n, fields.get(n)) for n in _NAMES), now) for tenant, identifier, fields in rows])

    async def replace(self, tenant: str, identifier: str, fields: dict[str, Any]) -> None:
        """Set every field as given (None clears): the users API's PATCH after its merge."""
        now = time.time()
        sets = ", ".join(f"{n} = excluded.{n}" for n in _NAMES)
        await self.db.execute(
            f"INSERT INTO customers (tenant, customer_identifier, {', '.join(_NAMES)}, created_at, updated_at) "
            f"VALUES ($1, $2, {', '.join(f'${i + 3}' for i in range(len(_NAMES)))}, ${len(_NAMES) + 3}, ${len(_NAMES) + 3}) "
            f"ON CONFLICT (tenant, customer_identifier) DO UPDATE SET {sets}, updated_at = excluded.updated_at",
            tenant, identifier, *(_to_db(n, fields.get(n)) for n in _NAMES), now)

    async def delete(self, tenant: str, identifier: str) -> bool:
        deleted = await self.db.execute("DELETE FROM customers WHERE tenant = $1 AND customer_identifier = $2", tenant, identifier)
        await self.db.execute("DELETE FROM limit_usage WHERE tenant = $1 AND scope = 'customer' AND subject = $2", tenant, identifier)
        return deleted > 0

    async def add_usage(self, rows: list[tuple[Any, ...]]) -> None:
        await self.db.executemany(_ADD_USAGE, rows)

    @staticmethod
    def _row(row: dict[str, Any]) -> dict[str, Any]:
        out = dict(row)
        if isinstance(out.get("metadata"), str):
            out["metadata"] = _decode(out["metadata"])
        return out


class UsageWriter:
    """Upserts and usage deltas, queued by the request path, written in batches by one task."""

    #: Most distinct customers/subjects held while the store is down; beyond, new ones are dropped (logged).
    MAX_PENDING = 100_000

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.store: CustomerStore | None = None
        self.upserts: dict[tuple[str, str], dict[str, Any]] = {}
        self.deltas: dict[tuple[str, str, str], list[float]] = {}  # spend, cost, requests, prompt, completion, last seen
        self.dropped = 0
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def start(self, store: CustomerStore) -> None:
        self.store = store
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.flush()

    def upsert(self, tenant: str, identifier: str, fields: dict[str, Any]) -> None:
        key = (tenant, identifier)
        if key not in self.upserts and len(self.upserts) >= self.MAX_PENDING:
            self.dropped += 1
            return
        self.upserts[key] = {**self.upserts.get(key, {}), **fields}

    def add(self, tenant: str, scope: str, subject: str, spend: float, cost: float, requests: int,
            prompt_tokens: int, completion_tokens: int) -> None:
        key = (tenant, scope, subject)
        d = self.deltas.get(key)
        if d is None:
            if len(self.deltas) >= self.MAX_PENDING:
                self.dropped += 1
                return
            d = self.deltas[key] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        d[0] += spend
        d[1] += cost
        d[2] += requests
        d[3] += prompt_tokens
        d[4] += completion_tokens
        d[5] = time.time()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> None:
        """Write what is queued; what the store refuses to take now stays queued for the next round."""
        if self.store is None or not (self.upserts or self.deltas):
            return
        async with self._lock:
            upserts, self.upserts = self.upserts, {}
            deltas, self.deltas = self.deltas, {}
            try:
                if upserts:
                    await self.store.upsert([(t, i, f) for (t, i), f in upserts.items()])
                    upserts = {}
                if deltas:
                    await self.store.add_usage([(t, s, subj, d[0], d[1], int(d[2]), int(d[3]), int(d[4]), d[5])
                                                for (t, s, subj), d in deltas.items()])
                    deltas = {}
            except StoreUnavailable as exc:
                log.warning("limits_store_unavailable", error=str(exc), pending=len(upserts) + len(deltas))
            except RowRejected as exc:  # a value the database cannot hold: dropped, not retried forever
                log.error("limits_store_rejected", error=str(exc), dropped=len(upserts) + len(deltas))
                upserts, deltas = {}, {}
            finally:
                for key, fields in upserts.items():  # not written: merged back under what came since
                    self.upserts[key] = {**fields, **self.upserts.get(key, {})}
                for key, d in deltas.items():
                    mine = self.deltas.setdefault(key, [0.0] * 6)
                    for i in range(5):
                        mine[i] += d[i]
                    mine[5] = max(mine[5], d[5])


__all__ = ["BUDGET_FIELDS", "CUSTOMER_FIELDS", "CustomerStore", "MIGRATIONS", "UsageWriter"]
