"""The gateway's database at start-up and while it runs, on a real PostgreSQL server and a real SQLite file.

Workers of one replica (or replicas) start together: each opens its own :class:`Database` and
migrates. PostgreSQL tests skip, loudly, when 127.0.0.1:5432 is not reachable.
"""

from __future__ import annotations

import asyncio
import uuid
import warnings

import pytest

from respan_gateway.config import DatabaseSettings
from respan_gateway.database import Database, Migration

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
STORES = {"things": [Migration(1, sqlite="CREATE TABLE things (id TEXT PRIMARY KEY)",
                               postgres="CREATE TABLE things (id TEXT PRIMARY KEY)")]}


async def _pg(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_URL, timeout=3)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def test_workers_starting_together_on_a_new_schema_all_migrate() -> None:
    """CREATE SCHEMA runs under the migration lock: no worker loses a race and starts without its tables."""

    async def run() -> None:
        try:
            await _pg("SELECT 1")
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"PostgreSQL is not reachable ({exc}): SKIPPED")
            pytest.skip(f"PostgreSQL on 127.0.0.1:5432 is not reachable ({exc})")
        schemas = [f"respan_race_{uuid.uuid4().hex[:10]}" for _ in range(4)]
        try:
            for schema in schemas:
                settings = DatabaseSettings(url=PG_URL, schema=schema, pool_size=1)
                workers = [Database(settings, STORES) for _ in range(8)]
                await asyncio.gather(*(db.start() for db in workers))
                try:
                    assert [db.connected for db in workers] == [True] * 8, f"a worker failed to start on {schema}"
                    for i, db in enumerate(workers):
                        await db.execute("INSERT INTO things (id) VALUES ($1)", f"w{i}")
                    assert await workers[0].fetchval("SELECT COUNT(*) FROM things") == 8
                finally:
                    await asyncio.gather(*(db.close() for db in workers))
        finally:
            for schema in schemas:
                await _pg(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    asyncio.run(run())
