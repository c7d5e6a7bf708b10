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


def test_sqlite_stores_none_as_null_and_bools_as_integers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """What sqlite3 does with None and bool parameters, whatever adapters bind them (a log record's
    empty fields and flags): NULL, and 1 / 0, read back as such by SQL."""
    stores = {"flags": [Migration(1, sqlite="CREATE TABLE flags (id TEXT PRIMARY KEY, a INTEGER, b INTEGER, c TEXT)",
                                  postgres="CREATE TABLE flags (id TEXT PRIMARY KEY, a BOOLEAN, b BOOLEAN, c TEXT)")]}

    async def run() -> None:
        db = Database(DatabaseSettings(url=f"sqlite:///{tmp_path}/flags.sqlite3"), stores)
        await db.start()
        try:
            await db.executemany("INSERT INTO flags (id, a, b, c) VALUES ($1, $2, $3, $4)",
                                 [("x", True, False, None), ("y", None, True, "z")])
            rows = await db.fetch("SELECT id, a, b, c, typeof(a) AS ta, typeof(c) AS tc FROM flags ORDER BY id")
            assert rows == [{"id": "x", "a": 1, "b": 0, "c": None, "ta": "integer", "tc": "null"},
                            {"id": "y", "a": None, "b": 1, "c": "z", "ta": "null", "tc": "text"}]
            assert await db.fetchval("SELECT COUNT(*) FROM flags WHERE a = 1 AND b IS 0 AND c IS NULL") == 1
        finally:
            await db.close()

    asyncio.run(run())


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_transaction_commits_all_its_statements_or_none(tmp_path, backend: str) -> None:  # type: ignore[no-untyped-def]
    """Database.transaction: what the work wrote and read inside it, committed together; a work that
    raises leaves nothing; on SQLite a work that awaits anything but its statements is refused (it runs
    to its end in the database's thread) and rolled back."""

    async def run() -> None:
        if backend == "postgres":
            try:
                await _pg("SELECT 1")
            except Exception as exc:  # noqa: BLE001
                warnings.warn(f"PostgreSQL is not reachable ({exc}): SKIPPED")
                pytest.skip(f"PostgreSQL is not reachable: {exc}")
            settings = DatabaseSettings(url=PG_URL, schema=f"tx_{uuid.uuid4().hex[:12]}")
        else:
            settings = DatabaseSettings(url=f"sqlite:///{tmp_path}/tx.sqlite3")
        db = Database(settings, STORES)
        await db.start()
        try:
            async def good(tx):  # type: ignore[no-untyped-def]
                await tx.executemany("INSERT INTO things (id) VALUES ($1)", [("a",), ("b",)])
                seen = await tx.fetch("SELECT id FROM things ORDER BY id")
                await tx.execute("INSERT INTO things (id) VALUES ($1)", f"{len(seen)}")
                return seen

            assert await db.transaction(good) == [("a",), ("b",)]

            async def bad(tx):  # type: ignore[no-untyped-def]
                await tx.execute("INSERT INTO things (id) VALUES ($1)", "c")
                raise ValueError("no")

            with pytest.raises(ValueError):
                await db.transaction(bad)
            if backend == "sqlite":
                async def awaits(tx):  # type: ignore[no-untyped-def]
                    await tx.execute("INSERT INTO things (id) VALUES ($1)", "d")
                    await asyncio.sleep(0)

                with pytest.raises(RuntimeError):
                    await db.transaction(awaits)
            assert [r["id"] for r in await db.fetch("SELECT id FROM things ORDER BY id")] == ["2", "a", "b"]
        finally:
            await db.close()
            if backend == "postgres":
                await _pg(f"DROP SCHEMA IF EXISTS {settings.schema} CASCADE")

    asyncio.run(run())
