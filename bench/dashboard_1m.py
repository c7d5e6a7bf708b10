"""Every dashboard page over 1,000,000 log records, on SQLite or PostgreSQL: how long each takes (not a test).

    .venv/bin/python bench/dashboard_1m.py [--records 1000000] [--days 30] [--db URL] [--schema NAME] [--reuse]

``--db``: ``sqlite:////abs/path.sqlite3`` (default: a scratch file) or ``postgresql://...`` with
``--schema`` (default ``dash_bench``: dropped and created again unless ``--reuse``). ``--reuse`` keeps
the records of an earlier run in that database (it still migrates it). The fill puts records spread
over the last ``--days`` days (4 models, 200 customers, a metadata key) into the logging plugin's own
schema, with the roll-up trigger off, then rolls them up with the migrations' own backfill statements
and turns the trigger on again; 200 customers go in the limits plugin's tables. Then each page is
timed through a real socket (median of 5, after one warm-up). The figures go in plugins/dashboard/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import sqlite3
import statistics
import tempfile
import time

import httpx2

from respan_gateway.testing import FakeUpstream, GatewayServer, test_config
from respan_plugins.logging import rollup

ADMIN = "sk-bench-admin"
COLUMNS = ("unique_id", "tenant", "start_time", "timestamp", "model", "provider_id", "status_code", "latency",
           "time_to_first_token", "prompt_tokens", "completion_tokens", "total_request_tokens", "cost",
           "customer_identifier", "metadata", "cache_hit", "stream")
CUSTOMERS = 200
ROLLUP_TABLES = (rollup.HOURLY, rollup.LATENCY, rollup.DAILY, rollup.LATENCY_DAILY)


def records(count: int, days: int):  # noqa: ANN201 - a generator of row tuples
    rng = random.Random(7)
    now = time.time()
    models = ["gpt-4o", "gpt-4o-mini", "claude-sonnet", "gemini-flash"]
    for i in range(count):
        t = now - rng.random() * days * 86400
        p, c = rng.randint(5, 2000), rng.randint(1, 800)
        model = models[i % 4]
        yield (f"r{i:08d}", "acme", t, t + 1, model, "openai" if "gpt" in model else "other",
               500 if rng.random() < 0.02 else 200, rng.lognormvariate(-0.5, 0.8), rng.random(),
               p, c, p + c, (p + 2 * c) * 1e-6, f"customer-{rng.randint(1, CUSTOMERS)}",
               f'{{"team": "team-{i % 10}"}}', i % 50 == 0, i % 2 == 1)


def _customers() -> list[tuple]:
    now = time.time()
    return [("acme", f"customer-{i}", f"Customer {i}", 50.0, "monthly", now, now) for i in range(1, CUSTOMERS + 1)]


_CUSTOMER_SQL = ("INSERT INTO customers (tenant, customer_identifier, name, period_budget, budget_duration, "
                 "created_at, updated_at) VALUES ({})")
_USAGE_SQL = ("INSERT INTO limit_usage (tenant, scope, subject, spend, cost, requests, prompt_tokens, "
              "completion_tokens, first_seen, last_active) SELECT tenant, 'customer', customer_identifier, "
              "SUM(cost), SUM(cost), COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), MIN(start_time), "
              "MAX(start_time) FROM request_logs GROUP BY tenant, customer_identifier")


def fill_sqlite(path: str, count: int, days: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.execute("DROP TRIGGER request_logs_rollup")
    sql = f"INSERT INTO request_logs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    conn.executemany(sql, records(count, days))
    for statement in [f"DELETE FROM {t}" for t in ROLLUP_TABLES] + rollup.backfill("sqlite") + rollup.backfill_daily("sqlite"):
        conn.execute(statement)
    for statement in rollup.noting_migration(23).sqlite:  # the trigger again (idempotent statements)
        conn.execute(statement)
    conn.executemany(_CUSTOMER_SQL.format(", ".join("?" * 7)), _customers())
    conn.execute(_USAGE_SQL)
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    # Into the database file: a reader of a 400 MB write-ahead log is several times slower than one of
    # the file (a gateway's own writes are checkpointed every 1000 pages).
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


async def fill_postgres(url: str, schema: str, count: int, days: int) -> None:
    import asyncpg  # the gateway's PostgreSQL driver

    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        async with conn.transaction():
            await conn.execute("ALTER TABLE request_logs DISABLE TRIGGER request_logs_rollup")
            await conn.copy_records_to_table("request_logs", records=records(count, days), columns=COLUMNS)
            for statement in ([f"DELETE FROM {t}" for t in ROLLUP_TABLES] + rollup.backfill("postgres")
                              + rollup.backfill_daily("postgres")):
                await conn.execute(statement)
            await conn.execute("ALTER TABLE request_logs ENABLE TRIGGER request_logs_rollup")
            await conn.executemany(_CUSTOMER_SQL.format(", ".join(f"${i}" for i in range(1, 8))), _customers())
            await conn.execute(_USAGE_SQL)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def drop_schema(url: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def migrate(url: str, schema: str) -> None:
    from respan_gateway.config import DatabaseSettings
    from respan_gateway.database import Database
    from respan_plugins.logging.store import MIGRATIONS

    db = Database(DatabaseSettings(url=url, schema=schema, command_timeout=3600), {"request_logs": MIGRATIONS})
    await db.start()
    version = await db.fetchval("SELECT version FROM respan_schema_versions WHERE store = 'request_logs'")
    await db.close()
    assert version == max(m.version for m in MIGRATIONS), f"the migrations failed (at version {version})"


def main() -> None:
    folder = tempfile.mkdtemp(prefix="respan-dash-bench-")
    try:
        run(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # the scratch database (unless --db), the spill folder


def run(folder: str) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--db", default="")
    parser.add_argument("--schema", default="dash_bench")
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()
    url = args.db or f"sqlite:///{folder}/respan.sqlite3"
    pg = url.startswith("postgres")
    if pg and not args.reuse:
        asyncio.run(drop_schema(url, args.schema))
    database = f'url = "{url}"' + (f'\nschema = "{args.schema}"' if pg else "")
    keys = f'{{ key = "{ADMIN}", tenant = "acme", name = "bench", admin = true }}'
    with FakeUpstream() as upstream:
        config = test_config(upstream.url, f'[database]\n{database}\n[logging]\nspill_dir = "{folder}/spill"\n', keys=keys)
        if args.reuse:  # the logging store's new migrations first, without the server's start-up timeout
            started = time.perf_counter()
            asyncio.run(migrate(url, args.schema if pg else ""))
            print(f"migrated the reused records in {time.perf_counter() - started:.1f} s")
        with GatewayServer(config):  # creates the schema, then stops
            pass
        if not args.reuse:
            started = time.perf_counter()
            if pg:
                asyncio.run(fill_postgres(url, args.schema, args.records, args.days))
            else:
                fill_sqlite(url.removeprefix("sqlite:///"), args.records, args.days)
            print(f"filled {args.records} records (rolled up by the migrations' backfill) in "
                  f"{time.perf_counter() - started:.1f} s")
        with GatewayServer(config) as gw, httpx2.Client(base_url=gw.url, timeout=120) as client:
            token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/ui/login").text)[1]
            client.post("/ui/login", data={"key": ADMIN, "csrf_token": token})
            long = "30d" if args.days <= 30 else "90d"
            pages = ["/ui/logs", "/ui/logs?model=gpt-4o", "/ui/logs?meta_key=team&meta_value=team-3",
                     "/ui/logs?errors=1&customer=customer-7", "/ui/logs?page=100", "/ui/logs/r00000042",
                     "/ui/usage?range=24h", "/ui/usage?range=7d", f"/ui/usage?range={long}",
                     f"/ui/usage?range={long}&group=customer", "/ui/customers", "/ui/customers/customer-7",
                     "/ui/keys", "/ui/prompts"]
            print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}, {os.cpu_count()} cores")
            for path in pages:
                status = client.get(path).status_code
                times = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    client.get(path)
                    times.append(time.perf_counter() - t0)
                print(f"{path:48s} {status} median {statistics.median(times) * 1000:8.0f} ms")
            print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if pg and not args.reuse:
        print(f"(schema {args.schema} kept for --reuse; drop it when done)")


if __name__ == "__main__":
    main()
