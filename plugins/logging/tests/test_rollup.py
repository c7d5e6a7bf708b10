"""The hourly roll-up (rollup.py) answers the usage aggregates as the records do, on SQLite and PostgreSQL.

The store reads the roll-up when a query starts on a whole hour (what the dashboard asks) and the
records otherwise: the same query once from ``hour`` and once from half a second before it (no record
lies in that half second) compares the two paths.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from respan_gateway.hookspecs import LogQuery, RequestLogReader, UsageBucket
from respan_plugins.logging import rollup
from respan_plugins.logging import store as store_module

HI = [{"role": "user", "content": "Say hello"}]
SUMS = ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens", "cache_hits")


def _make_records(gw: Any) -> None:
    client = gw.openai()
    plan = [("gpt-test", "alice")] * 4 + [("fake/other-model", "bob")] * 3 + [("gpt-test", "bob")] * 2
    for model, customer in plan:
        client.chat.completions.create(model=model, messages=HI, extra_body={"customer_identifier": customer})
    for _ in range(2):  # a miss, then a hit
        client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "cached"}],
                                       extra_body={"cache_enabled": True, "customer_identifier": "carol"})
    with pytest.raises(Exception):
        client.chat.completions.create(model="fake/fake-error-400", messages=HI)


def _same(rolled: list[UsageBucket], raw: list[UsageBucket], percentiles: bool) -> None:
    assert [(r.bucket, r.group) for r in rolled] == [(r.bucket, r.group) for r in raw]
    for a, b in zip(rolled, raw):
        assert {k: getattr(a, k) for k in SUMS} == {k: getattr(b, k) for k in SUMS}, (a, b)
        assert math.isclose(a.cost, b.cost, rel_tol=1e-9, abs_tol=1e-12)
        for p in ("p50_latency", "p95_latency"):
            exact, binned = getattr(b, p), getattr(a, p)
            if not percentiles:
                assert binned is None and exact is None
            elif exact is None or exact < rollup.SMALLEST:
                assert binned == exact or (binned is not None and binned <= rollup.SMALLEST)
            else:  # the histogram's bin of the exact nearest-rank value, reported as its middle
                assert abs(binned - exact) <= 0.049 * exact, (p, binned, exact)


def _compare(gw: Any, reader: RequestLogReader, hour: float) -> None:
    for bucket in ("hour", "day", None):
        for group in (None, "model", "provider", "customer", "key"):
            percentiles = group in (None, "model", "provider")
            rolled = gw.call(reader.usage("acme", LogQuery(start_time=hour), bucket=bucket, group_by=group,
                                          percentiles=percentiles))
            raw = gw.call(reader.usage("acme", LogQuery(start_time=hour - 0.5), bucket=bucket, group_by=group,
                                       percentiles=percentiles))
            assert raw, (bucket, group)
            _same(rolled, raw, percentiles)
    for field, value, group in (("customer_identifier", "bob", None), ("model", "gpt-test", "model"),
                                ("provider", "fake", None)):
        query = {"filters": [(field, "", value)]}
        rolled = gw.call(reader.usage("acme", LogQuery(start_time=hour, **query), bucket="hour", group_by=group,
                                      percentiles=False))
        raw = gw.call(reader.usage("acme", LogQuery(start_time=hour - 0.5, **query), bucket="hour", group_by=group,
                                   percentiles=False))
        assert raw and sum(r.requests for r in raw) < 12
        _same(rolled, raw, False)


def test_the_rollup_gives_the_records_figures_and_a_replay_counts_nothing_twice(logged_gateway) -> None:
    gw = logged_gateway()
    _make_records(gw)
    reader = gw.gateway.service(RequestLogReader)
    hour = math.floor(time.time() / 3600) * 3600 - 3600  # a whole hour: the roll-up answers
    totals = gw.call(reader.usage("acme", LogQuery(start_time=hour), bucket=None))
    assert [(t.requests, t.errors, t.cache_hits) for t in totals] == [(12, 1, 1)]
    _compare(gw, reader, hour)
    assert gw.call(reader.usage("globex", LogQuery(start_time=hour), bucket="hour")) == []

    # The writer's insert again, for every stored row (a batch retried after a timeout, a spill file
    # replayed): ON CONFLICT DO NOTHING inserts nothing, so no trigger fires and nothing counts twice.
    db = gw.gateway.database
    rows = gw.call(db.fetch("SELECT * FROM request_logs"))
    assert len(rows) == 12
    gw.call(db.executemany(store_module._INSERT, [[row[c] for c in store_module.COLUMNS] for row in rows]))
    assert gw.call(reader.usage("acme", LogQuery(start_time=hour), bucket=None)) == totals
    _compare(gw, reader, hour)


def test_the_migration_rolls_up_the_records_already_stored(logged_gateway, backend: str) -> None:
    gw = logged_gateway()
    _make_records(gw)
    reader = gw.gateway.service(RequestLogReader)
    hour = math.floor(time.time() / 3600) * 3600 - 3600
    before = gw.call(reader.usage("acme", LogQuery(start_time=hour), bucket="hour", group_by="model"))
    db = gw.gateway.database
    # Back to the schema before the roll-up (version 2, records kept), then its migration again.
    drops = ["DROP TRIGGER IF EXISTS request_logs_rollup" + (" ON request_logs" if backend == "postgres" else "")]
    drops += [f"DROP TABLE {t}" for t in (rollup.HOURLY, rollup.LATENCY, rollup.BINS)]
    if backend == "postgres":
        drops.append("DROP FUNCTION request_logs_rollup()")
    for sql in drops:
        gw.call(db.execute(sql))
    migration = rollup.migration(20)
    for sql in migration.postgres if backend == "postgres" else migration.sqlite:
        gw.call(db.execute(sql))
    assert gw.call(reader.usage("acme", LogQuery(start_time=hour), bucket="hour", group_by="model")) == before
    _compare(gw, reader, hour)
