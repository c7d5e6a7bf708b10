"""Customers as the request path sees them: the stored record merged with what the call says, cached.

A call names its customer (``customer_identifier``, ``customer_email``, ``customer_name``,
``customer_params``; normalised once by the params plugin into ``call.outcome.customer``). The
stored record is read once per ``customer_cache_ttl`` per process; what the call adds or changes is
merged in and queued for the database only when it differs from what this process last wrote or
read, so a steady stream of calls with the same ``customer_params`` writes nothing.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import structlog

from respan_gateway import Customer
from respan_gateway.database import StoreUnavailable
from respan_gateway.params import CustomerParams

from .store import BUDGET_FIELDS, CustomerStore, UsageWriter

log = structlog.get_logger("respan_gateway.limits")

#: When the store cannot be read, try again after this many seconds (meanwhile the call's own params apply).
RETRY_AFTER_FAILED_READ = 1.0


class Cached:
    __slots__ = ("fields", "spend", "loaded", "stored")

    def __init__(self, fields: dict[str, Any], spend: float | None, loaded: float, stored: bool = True) -> None:
        # `stored`: the database has a row (else the next call queues its insert, once).
        self.fields, self.spend, self.loaded, self.stored = fields, spend, loaded, stored


def call_fields(customer: Customer, params: CustomerParams | None) -> dict[str, Any]:
    """The fields a call sets on its customer (None = not said)."""
    fields: dict[str, Any] = {"email": customer.email, "name": customer.name, "group_identifier": customer.group}
    if params is not None:
        for name in BUDGET_FIELDS:
            fields[name] = getattr(params, name)
        fields["metadata"] = params.metadata
    return {k: v for k, v in fields.items() if v is not None}


class CustomerCache:
    def __init__(self, ttl: float, size: int, writer: UsageWriter) -> None:
        self.ttl, self.size, self.writer = ttl, size, writer
        self.store: CustomerStore | None = None
        self._entries: collections.OrderedDict[tuple[str, str], Cached] = collections.OrderedDict()
        self._key_spend: collections.OrderedDict[tuple[str, str], Cached] = collections.OrderedDict()

    async def resolve(self, tenant: str, customer: Customer, params: CustomerParams | None) -> Cached:
        """The customer's fields (stored, with the call's merged in) and its stored lifetime spend."""
        key = (tenant, customer.identifier)
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is None or now - entry.loaded > self.ttl:
            entry = await self._load(tenant, customer.identifier, entry, now)
        else:
            self._entries.move_to_end(key)
        given = call_fields(customer, params)
        changed = {k: v for k, v in given.items() if entry.fields.get(k) != v}
        if changed or not entry.stored:
            entry.fields = {**entry.fields, **changed}
            entry.stored = True
            self.writer.upsert(tenant, customer.identifier, changed)
        return entry

    async def _load(self, tenant: str, identifier: str, old: Cached | None, now: float) -> Cached:
        key = (tenant, identifier)
        try:
            row = await self.store.get(tenant, identifier) if self.store is not None else None
        except StoreUnavailable as exc:
            log.warning("customer_read_failed", error=str(exc))
            entry = old or Cached({}, None, 0.0, stored=False)
            entry.loaded = now - self.ttl + RETRY_AFTER_FAILED_READ
            self._put(key, entry)
            return entry
        if row is None:
            entry = Cached({}, 0.0, now, stored=False)
        else:
            entry = Cached({k: row.get(k) for k in (*BUDGET_FIELDS, "email", "name", "group_identifier", "metadata")
                            if row.get(k) is not None}, float(row.get("spend") or 0.0), now)
        self._put(key, entry)
        return entry

    def _put(self, key: tuple[str, str], entry: Cached) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def markup(self, tenant: str, identifier: str) -> float:
        """The cached customer's ``markup_percentage`` (0 when unknown)."""
        entry = self._entries.get((tenant, identifier))
        return float(entry.fields.get("markup_percentage") or 0.0) if entry is not None else 0.0

    def forget(self, tenant: str, identifier: str) -> None:
        """Drop the cached record (the users API changed or deleted it)."""
        self._entries.pop((tenant, identifier), None)

    async def key_spend(self, tenant: str, key_id: str) -> float | None:
        """The stored lifetime spend of a gateway key (to seed its ``max_spend`` counter); None when unreadable."""
        key = (tenant, key_id)
        entry = self._key_spend.get(key)
        now = time.monotonic()
        if entry is not None and now - entry.loaded <= self.ttl:
            return entry.spend
        try:
            row = await self.store.usage(tenant, "key", key_id) if self.store is not None else None
        except StoreUnavailable as exc:
            log.warning("key_usage_read_failed", error=str(exc))
            return entry.spend if entry is not None else None
        entry = Cached({}, float(row["spend"]) if row else 0.0, now)
        self._key_spend[key] = entry
        while len(self._key_spend) > self.size:
            self._key_spend.popitem(last=False)
        return entry.spend


__all__ = ["Cached", "CustomerCache", "call_fields"]
