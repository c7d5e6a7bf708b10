"""The ``RequestLogReader`` service (respan_gateway.hookspecs): the one way to read log records.

The logs API and other plugins (the dashboard) read through it, so they filter the same way. Each read
first writes this process's queued records (read-your-writes); records of other replicas appear
within their ``flush_interval``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from respan_gateway.hookspecs import LogQuery, UsageBucket, UsageGroup
from respan_gateway.database import StoreUnavailable

READ_FLUSH_TIMEOUT = 2.0


class LogReader:
    def __init__(self, observer: Any) -> None:
        self._middleware = observer  # the logging observer: its store and writer

    @property
    def _store(self) -> Any:
        store = self._middleware.store
        if store is None:
            raise StoreUnavailable("the request log store is not started")
        return store

    async def _flush(self) -> None:
        try:
            await asyncio.wait_for(self._middleware.writer.flush(), READ_FLUSH_TIMEOUT)
        except (asyncio.TimeoutError, Exception):
            pass  # the store is down or slow: read what is there (the read itself reports the outage)

    async def list(self, tenant: str, query: LogQuery) -> tuple[int, list[dict[str, Any]]]:
        await self._flush()
        return await self._store.list(tenant, query)

    async def get(self, tenant: str, unique_id: str) -> dict[str, Any] | None:
        record = await self._store.get(tenant, unique_id)
        if record is None:
            await self._flush()
            record = await self._store.get(tenant, unique_id)
        return record

    async def summary(self, tenant: str, query: LogQuery) -> dict[str, Any]:
        await self._flush()
        return await self._store.summary(tenant, query)

    async def usage(self, tenant: str, query: LogQuery, *, bucket: Literal["hour", "day"] | None,
                    group_by: UsageGroup | None = None, percentiles: bool = True) -> list[UsageBucket]:
        await self._flush()
        return await self._store.usage(tenant, query, bucket=bucket, group_by=group_by, percentiles=percentiles)
