"""The dashboard over 1,000,000 log records on SQLite: how long its pages take (not a test).

    .venv/bin/python bench/dashboard_1m.py [--records 1000000] [--days 30]

Fills a scratch SQLite database (the logging plugin's own schema and migrations) with records spread
over the last ``--days`` days, 4 models, 200 customers and a metadata key, then times each page
through a real socket (median of 5, after one warm-up). The figures go in plugins/dashboard/README.md.
"""

from __future__ import annotations

import argparse
import random
import re
import sqlite3
import statistics
import tempfile
import time

import httpx2

from respan_gateway.testing import FakeUpstream, GatewayServer, test_config

ADMIN = "sk-bench-admin"
COLUMNS = ("unique_id", "tenant", "start_time", "timestamp", "model", "provider_id", "status_code", "latency",
           "time_to_first_token", "prompt_tokens", "completion_tokens", "total_request_tokens", "cost",
           "customer_identifier", "metadata", "cache_hit", "stream")


def fill(path: str, records: int, days: int) -> None:
    conn = sqlite3.connect(path)
    rng = random.Random(7)
    now = time.time()
    models = ["gpt-4o", "gpt-4o-mini", "claude-sonnet", "gemini-flash"]
    sql = f"INSERT INTO request_logs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    batch = []
    for i in range(records):
        t = now - rng.random() * days * 86400
        p, c = rng.randint(5, 2000), rng.randint(1, 800)
        model = models[i % 4]
        batch.append((f"r{i:08d}", "acme", t, t + 1, model, "openai" if "gpt" in model else "other",
                      500 if rng.random() < 0.02 else 200, rng.lognormvariate(-0.5, 0.8), rng.random(),
                      p, c, p + c, (p + 2 * c) * 1e-6, f"customer-{rng.randint(1, 200)}",
                      f'{{"team": "team-{i % 10}"}}', 0, i % 2))
        if len(batch) == 50_000:
            conn.executemany(sql, batch)
            batch.clear()
    conn.executemany(sql, batch)
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="respan-dash-bench-")
    db = f"{folder}/respan.sqlite3"
    keys = f'{{ key = "{ADMIN}", tenant = "acme", name = "bench", admin = true }}'
    with FakeUpstream() as upstream:
        config = test_config(upstream.url, f'[database]\nurl = "sqlite:///{db}"\n[logging]\nspill_dir = "{folder}/spill"\n', keys=keys)
        with GatewayServer(config):  # creates the schema (migrations), then stops
            pass
        started = time.perf_counter()
        fill(db, args.records, args.days)
        print(f"filled {args.records} records in {time.perf_counter() - started:.1f} s")
        with GatewayServer(config) as gw, httpx2.Client(base_url=gw.url, timeout=120) as client:
            token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/ui/login").text)[1]
            client.post("/ui/login", data={"key": ADMIN, "csrf_token": token})
            pages = ["/ui/logs", "/ui/logs?model=gpt-4o", "/ui/logs?meta_key=team&meta_value=team-3",
                     "/ui/logs?errors=1&customer=customer-7", "/ui/logs?page=100",
                     "/ui/usage?range=24h", "/ui/usage?range=7d", f"/ui/usage?range={'30d' if args.days <= 30 else '90d'}"]
            for path in pages:
                assert client.get(path).status_code == 200, path
                times = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    client.get(path)
                    times.append(time.perf_counter() - t0)
                print(f"{path:48s} median {statistics.median(times) * 1000:8.0f} ms")


if __name__ == "__main__":
    main()
