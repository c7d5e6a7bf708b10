"""The hourly and daily roll-up (rollup.py) answers the usage aggregates as the records do, on SQLite
and PostgreSQL.

The store reads the roll-up when a query starts on a whole hour (what the dashboard asks) and the
records otherwise: the same query once from ``hour`` and once from half a second before it (no record
lies in that half second) compares the two paths. The records over several days are the rows of real
requests inserted again (the writer's own INSERT, as a script would: the trigger notes them, and the
reader rolls them up before it reads) hours and days earlier.
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


def _spread(gw: Any, hours_back: tuple[int, ...] = (1, 5, 23, 30, 49, 75)) -> None:
    """Every record of a request again ``hours_back`` hours earlier (new ids): records over four UTC days."""
    db = gw.gateway.database
    gw.call(gw.gateway.service(RequestLogReader).get("acme", "none"))  # a miss writes the queued records first
    rows = gw.call(db.fetch("SELECT * FROM request_logs WHERE unique_id NOT LIKE 'copy-%'"))  # the originals
    copies = []
    for k in hours_back:
        for row in rows:
            copy = {**row, "unique_id": f"copy-{k}h-{row['unique_id']}", "start_time": row["start_time"] - k * 3600,
                    "timestamp": row["timestamp"] - k * 3600 if row["timestamp"] is not None else None}
            copies.append([copy[c] for c in store_module.COLUMNS])
    gw.call(db.executemany(store_module._INSERT, copies))


def _compare(gw: Any, reader: RequestLogReader, hour: float) -> None:
    for bucket in ("hour", "day", None):
        for group in (None, "model", "provider", "customer", "key"):
            percentiles = True  # from histograms where the roll-up has them (rollup.plan), else the records
            rolled = gw.call(reader.usage("acme", LogQuery(start_time=hour), bucket=bucket, group_by=group,
                                          percentiles=percentiles))
            raw = gw.call(reader.usage("acme", LogQuery(start_time=hour - 0.5), bucket=bucket, group_by=group,
                                       percentiles=percentiles))
            assert raw, (bucket, group)
            _same(rolled, raw, percentiles)
    # The logs list's count (from the roll-up for these filters) is the records'.
    for filters in ([], [("model", "", "gpt-test")], [("customer_identifier", "", "bob")], [("provider", "", "fake")]):
        counted = gw.call(reader.list("acme", LogQuery(start_time=hour, filters=filters)))[0]
        assert counted == gw.call(reader.list("acme", LogQuery(start_time=hour - 0.5, filters=filters)))[0] > 0
    everything = sum(r.requests for r in gw.call(reader.usage("acme", LogQuery(start_time=hour - 0.5), bucket=None)))
    for field, value, group in (("customer_identifier", "bob", None), ("model", "gpt-test", "model"),
                                ("provider", "fake", None)):
        query = {"filters": [(field, "", value)]}
        for bucket in ("hour", "day", None):
            rolled = gw.call(reader.usage("acme", LogQuery(start_time=hour, **query), bucket=bucket, group_by=group,
                                          percentiles=bucket != "hour"))
            raw = gw.call(reader.usage("acme", LogQuery(start_time=hour - 0.5, **query), bucket=bucket,
                                       group_by=group, percentiles=bucket != "hour"))
            assert raw and sum(r.requests for r in raw) < everything
            _same(rolled, raw, bucket != "hour")


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


def test_the_daily_rollup_over_several_days_gives_the_records_figures(logged_gateway) -> None:
    gw = logged_gateway()
    _make_records(gw)
    _spread(gw)
    reader = gw.gateway.service(RequestLogReader)
    now_hour = math.floor(time.time() / 3600) * 3600
    totals = gw.call(reader.usage("acme", LogQuery(start_time=now_hour - 80 * 3600), bucket=None))
    assert [(t.requests, t.errors, t.cache_hits) for t in totals] == [(7 * 12, 7, 7)]
    # From an hour that is not midnight (hourly rows to the next midnight, daily rows after; unless one
    # of them is midnight), from a midnight (daily rows only) and from the last hour (hourly rows only).
    midnight = math.floor((now_hour - 80 * 3600) / 86400) * 86400
    for start in (now_hour - 80 * 3600, now_hour - 26 * 3600, now_hour - 50 * 3600, midnight, now_hour - 3600):
        _compare(gw, reader, start)
    days = gw.call(reader.usage("acme", LogQuery(start_time=midnight), bucket="day"))
    assert len(days) >= 4 and sum(d.requests for d in days) == 7 * 12
    # A record without a start time is in no roll-up row: the list's count of all records still holds it.
    db = gw.gateway.database
    row = gw.call(db.fetch("SELECT * FROM request_logs WHERE model = 'gpt-test' LIMIT 1"))[0]
    gw.call(db.executemany(store_module._INSERT, [[{**row, "unique_id": "copy-unstarted", "start_time": None}[c]
                                                    for c in store_module.COLUMNS]]))
    for filters, sql in (([], ""), ([("model", "", "gpt-test")], " AND model = 'gpt-test'")):
        stored = gw.call(db.fetchval(f"SELECT COUNT(*) FROM request_logs WHERE tenant = 'acme'{sql}"))
        assert gw.call(reader.list("acme", LogQuery(filters=filters)))[0] == stored


def test_the_migrations_roll_up_the_records_already_stored(logged_gateway, backend: str) -> None:
    gw = logged_gateway()
    _make_records(gw)
    _spread(gw, (2, 30))
    reader = gw.gateway.service(RequestLogReader)
    hour = math.floor(time.time() / 3600) * 3600 - 40 * 3600
    before = {b: gw.call(reader.usage("acme", LogQuery(start_time=hour), bucket=b, group_by="model"))
              for b in ("hour", "day", None)}
    db = gw.gateway.database
    pg = backend == "postgres"

    def run(migration: Any) -> None:
        if pg:  # one transaction, as the migrator runs it (LOCK TABLE needs one): a multi-statement query
            gw.call(db.execute(";\n".join(migration.postgres)))
            return
        for sql in migration.sqlite:
            gw.call(db.execute(sql))

    # Back to the schema before the roll-up (version 2, records kept), then migration 20 again: the
    # hours of the records stored so far, and a trigger that keeps the hours only (as it was).
    drops = ["DROP TRIGGER IF EXISTS request_logs_rollup" + (" ON request_logs" if pg else "")]
    drops += [f"DROP TABLE {t}" for t in (rollup.HOURLY, rollup.LATENCY, rollup.BINS, rollup.DAILY, rollup.LATENCY_DAILY)]
    if pg:
        drops.append("DROP FUNCTION request_logs_rollup()")
    for sql in drops:
        gw.call(db.execute(sql))
    run(rollup.migration(20))
    assert gw.call(db.fetchval(f"SELECT COUNT(*) FROM {rollup.HOURLY}")) > 0
    # Records written while at version 20 (hours only), then migration 21: the days from those hours.
    _spread(gw, (60,))
    assert gw.call(db.fetchval(f"SELECT COUNT(*) FROM request_logs")) == 4 * 12
    run(rollup.daily_migration(21))
    after = {b: gw.call(reader.usage("acme", LogQuery(start_time=hour), bucket=b, group_by="model"))
             for b in ("hour", "day", None)}
    for b in before:  # the copies 60 hours back are before ``hour``; costs summed in another order
        _same(after[b], before[b], True)
        assert [(r.p50_latency, r.p95_latency) for r in after[b]] == [(r.p50_latency, r.p95_latency) for r in before[b]]
    _compare(gw, reader, hour)
    _compare(gw, reader, math.floor((hour - 40 * 3600) / 86400) * 86400)  # with the copies of version 20
    # The new trigger keeps both grains.
    _spread(gw, (90,))
    _compare(gw, reader, math.floor((hour - 60 * 3600) / 86400) * 86400)
    # Migration 23: the trigger notes each record inserted instead; a script's inserts (``_spread``'s)
    # stay noted until the next reader (or writer) rolls them up, once.
    run(rollup.noting_migration(23))
    _spread(gw, (120,))
    assert gw.call(db.fetchval(f"SELECT COUNT(*) FROM {rollup.UNROLLED}")) == 12
    _compare(gw, reader, math.floor((hour - 90 * 3600) / 86400) * 86400)
    assert gw.call(db.fetchval(f"SELECT COUNT(*) FROM {rollup.UNROLLED}")) == 0
    # A script's inserts, then a batch of the writer: the batch rolls up its record and the script's
    # (as stored), before any read.
    _spread(gw, (150,))
    gw.openai().chat.completions.create(model="gpt-test", messages=HI, extra_body={"customer_identifier": "dave"})
    gw.call(reader.get("acme", "none"))  # a miss writes the queued records first
    assert gw.call(db.fetchval(f"SELECT COUNT(*) FROM {rollup.UNROLLED}")) == 0
    _compare(gw, reader, math.floor((hour - 120 * 3600) / 86400) * 86400)
