"""The hourly and daily roll-up of ``request_logs``: what the usage aggregates read instead of the records.

Four tables, two per grain (``hour``, ``day``). Every record actually inserted into ``request_logs``,
by any writer (replica or script), is noted by a trigger in the database itself, in
``request_logs_unrolled``; an idempotent replay, ``ON CONFLICT (unique_id) DO NOTHING``, inserts
nothing and fires no trigger on SQLite nor on PostgreSQL. The noted records are rolled up in bulk
(:func:`fold`: summed per roll-up row in Python, one upsert per row touched rather than seventeen
upserts per record, which cost a proxied request ~18% of its instructions on SQLite): by the
gateway's writer in the very transaction that inserts its batch (so none of its records is ever
unrolled after a commit), from its records in hand; and what another writer left noted (a script, a
replica of an earlier version during a rollout) as stored, by the next batch or by a reader of the
roll-up before it reads. On PostgreSQL the transaction takes a lock on ``request_logs_unrolled``
first (:func:`lock`): two replicas never roll up the same record, and cannot deadlock on the roll-up
rows.

- ``request_logs_hourly`` / ``request_logs_daily``: per (tenant, dimension, UTC hour or day, value) the
  sums the usage view shows (requests, errors, tokens, cost, cache hits). A record adds to five rows
  of each, one per dimension: ``""`` (all records), ``model``, ``provider``, ``customer``, ``key``
  (its value ``""`` when unset).
- ``request_logs_latency`` / ``request_logs_latency_daily``: per (tenant, dimension, hour or day,
  value, bin) how many latencies fell in that bin, for the dimensions ``""``, ``model`` and
  ``provider``, and per day for ``customer`` too (customers per hour, and keys, are too many for
  histograms: those percentiles come from the records). Bins are log-spaced, 10% wide, from 1 ms to an hour (``request_logs_latency_bins``; bin 0
  is below 1 ms, the last one above an hour). A percentile is the nearest-rank one's bin, reported as
  the bin's geometric middle: within 4.9% of the exact value (below 1 ms: 0.5 ms).

A query from a whole hour reads the hourly rows up to the next UTC midnight and the daily rows from
there, unless it asks for hour buckets (hourly rows only): 30 days are 30 rows per value, not 720.
The records stay the source of truth: a query the roll-up cannot answer (other filters, a time range
not on whole hours, an end time, percentiles of keys, or of customers over hours) reads them as
before. Records changed by the logs API's PATCH (metadata, note, feedback) change nothing rolled up.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Iterable, Sequence
from typing import Any

from respan_gateway.database import Migration

HOURLY = "request_logs_hourly"
LATENCY = "request_logs_latency"
DAILY = "request_logs_daily"
LATENCY_DAILY = "request_logs_latency_daily"
BINS = "request_logs_latency_bins"
#: The ids of the records inserted and not rolled up yet, noted by the trigger.
UNROLLED = "request_logs_unrolled"


class Grain:
    """One roll-up granularity: its width (seconds), tables, time column and histogram dimensions."""

    def __init__(self, width: int, sums: str, latency: str, column: str, histograms: tuple[str, ...]) -> None:
        self.width, self.sums, self.latency, self.column = width, sums, latency, column
        self.histograms = histograms


#: The dimensions with latency histograms: per hour all records, models and providers; per day customers
#: too (a customer's page: their p50/p95 per day over 30 days from ~30 x 50 rows, not their records).
HISTOGRAM_DIMENSIONS = ("", "model", "provider")
HOUR = Grain(3600, HOURLY, LATENCY, "hour", HISTOGRAM_DIMENSIONS)
DAY = Grain(86400, DAILY, LATENCY_DAILY, "day", (*HISTOGRAM_DIMENSIONS, "customer"))

#: Dimension name -> request_logs column; "" is every record of the tenant.
DIMENSIONS = {"": None, "model": "model", "provider": "provider_id", "customer": "customer_identifier", "key": "key_id"}
#: The usage API's filter fields (after the store's aliases) the roll-up answers, by dimension.
FILTER_DIMENSIONS = {"model": "model", "provider_id": "provider", "customer_identifier": "customer", "key_id": "key"}

RATIO = 1.1
SMALLEST = 0.001
LARGEST = 3600.0
#: Lower bounds of the latency bins (seconds): 0, then 1 ms * 1.1^k up to past an hour.
LOWER = [0.0] + [SMALLEST * RATIO ** k for k in range(math.ceil(math.log(LARGEST / SMALLEST, RATIO)) + 1)]


def representative(bin_: int) -> float:
    """The latency a bin stands for: its geometric middle (half a millisecond for bin 0)."""
    if bin_ <= 0:
        return SMALLEST / 2
    return LOWER[min(bin_, len(LOWER) - 1)] * math.sqrt(RATIO)


def _sums(new: str = "NEW") -> list[tuple[str, str]]:
    return [
        ("requests", "1"),
        ("errors", f"CASE WHEN {new}.status_code >= 400 THEN 1 ELSE 0 END"),
        ("prompt_tokens", f"COALESCE({new}.prompt_tokens, 0)"),
        ("completion_tokens", f"COALESCE({new}.completion_tokens, 0)"),
        ("total_tokens", f"COALESCE({new}.total_request_tokens, 0)"),
        ("cost", f"COALESCE({new}.cost, 0)"),
        ("cache_hits", f"CASE WHEN {new}.cache_hit THEN 1 ELSE 0 END"),
    ]


SUM_COLUMNS = [name for name, _ in _sums()]


def _grain_tables(dialect: str, grain: Grain) -> list[str]:
    integer = "BIGINT" if dialect == "postgres" else "INTEGER"
    real = "DOUBLE PRECISION" if dialect == "postgres" else "REAL"
    clustered = "" if dialect == "postgres" else " WITHOUT ROWID"
    sums = ", ".join(f"{name} {real if name == 'cost' else integer} NOT NULL" for name in SUM_COLUMNS)
    t = grain.column
    return [
        f"CREATE TABLE IF NOT EXISTS {grain.sums} (tenant TEXT NOT NULL, dim TEXT NOT NULL, {t} {integer} NOT NULL, "
        f"value TEXT NOT NULL, {sums}, PRIMARY KEY (tenant, dim, {t}, value)){clustered}",
        # One customer's (or key's, or model's) hours or days: the customer page.
        f"CREATE INDEX IF NOT EXISTS {grain.sums}_value ON {grain.sums} (tenant, dim, value, {t})",
        f"CREATE TABLE IF NOT EXISTS {grain.latency} (tenant TEXT NOT NULL, dim TEXT NOT NULL, {t} {integer} NOT NULL, "
        f"value TEXT NOT NULL, bin INTEGER NOT NULL, n {integer} NOT NULL, "
        f"PRIMARY KEY (tenant, dim, {t}, value, bin)){clustered}",
    ]


def _tables(dialect: str) -> list[str]:
    real = "DOUBLE PRECISION" if dialect == "postgres" else "REAL"
    return [
        *_grain_tables(dialect, HOUR),
        f"CREATE TABLE IF NOT EXISTS {BINS} (lower {real} PRIMARY KEY, bin INTEGER NOT NULL UNIQUE)",
        # repr() of a float is exact: both databases hold the very bounds Python computed.
        f"INSERT INTO {BINS} (lower, bin) VALUES " + ", ".join(f"({lower!r}, {i})" for i, lower in enumerate(LOWER)),
    ]


def _start(dialect: str, column: str, width: int = 3600) -> str:
    """The start of ``column``'s hour or UTC day (whole seconds)."""
    return f"CAST(floor({column} / {width}) * {width} AS BIGINT)" if dialect == "postgres" else \
        f"CAST({column} / {width} AS INTEGER) * {width}"


def _bin(column: str) -> str:
    return f"(SELECT b.bin FROM {BINS} b WHERE b.lower <= {column} ORDER BY b.lower DESC LIMIT 1)"


def _dims(dialect: str, names: tuple[str, ...] | list[str]) -> str:
    """The dimension rows of the NEW record, as a derived table d(dim, value)."""
    values = [("''" if DIMENSIONS[d] is None else f"COALESCE(NEW.{DIMENSIONS[d]}, '')") for d in names]
    if dialect == "postgres":
        return "(VALUES " + ", ".join(f"('{d}', {v})" for d, v in zip(names, values)) + ") AS d(dim, value)"
    return "(" + " UNION ALL ".join(f"SELECT '{d}' AS dim, {v} AS value" for d, v in zip(names, values)) + ") AS d"


def _upserts(dialect: str, grain: Grain) -> list[str]:
    sums = _sums()
    t = grain.column
    start = _start(dialect, "NEW.start_time", grain.width)
    rolled = (
        f"INSERT INTO {grain.sums} (tenant, dim, {t}, value, {', '.join(SUM_COLUMNS)}) "
        f"SELECT NEW.tenant, d.dim, {start}, d.value, {', '.join(e for _, e in sums)} "
        f"FROM {_dims(dialect, list(DIMENSIONS))} WHERE true "  # WHERE: SQLite's INSERT ... SELECT ... ON CONFLICT needs one
        f"ON CONFLICT (tenant, dim, {t}, value) DO UPDATE SET "
        + ", ".join(f"{n} = {grain.sums}.{n} + excluded.{n}" for n in SUM_COLUMNS)
    )
    latency = (
        f"INSERT INTO {grain.latency} (tenant, dim, {t}, value, bin, n) "
        f"SELECT NEW.tenant, d.dim, {start}, d.value, {_bin('NEW.latency')}, 1 "
        f"FROM {_dims(dialect, grain.histograms)} WHERE NEW.latency IS NOT NULL "
        f"ON CONFLICT (tenant, dim, {t}, value, bin) DO UPDATE SET n = {grain.latency}.n + 1"
    )
    return [rolled, latency]


def trigger(dialect: str, grains: tuple[Grain, ...]) -> list[str]:
    """Migrations 20 and 21's trigger, which kept the roll-up of ``grains`` one record at a time (its
    PostgreSQL function; the trigger itself once); migration 23 replaces it."""
    body = "; ".join(sql for grain in grains for sql in _upserts(dialect, grain))
    if dialect == "sqlite":
        return [f"CREATE TRIGGER IF NOT EXISTS request_logs_rollup AFTER INSERT ON request_logs "
                f"WHEN NEW.start_time IS NOT NULL BEGIN {body}; END"]
    function = ("CREATE OR REPLACE FUNCTION request_logs_rollup() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.start_time IS NOT NULL THEN {body}; END IF; RETURN NULL; END $$")
    if len(grains) > 1:  # a later migration: the trigger exists, its function is replaced
        return [function]
    return [function, "CREATE TRIGGER request_logs_rollup AFTER INSERT ON request_logs FOR EACH ROW "
                      "EXECUTE FUNCTION request_logs_rollup()"]


def backfill(dialect: str) -> list[str]:
    """The hourly rows of the records already stored (once, in migration 20; the benchmark's fill too)."""
    out = []
    hour = _start(dialect, "r.start_time")
    sums = ", ".join(f"SUM({e})" for _, e in _sums("r"))
    for dim, column in DIMENSIONS.items():
        value = "''" if column is None else f"COALESCE(r.{column}, '')"
        out.append(f"INSERT INTO {HOURLY} (tenant, dim, hour, value, {', '.join(SUM_COLUMNS)}) "
                   f"SELECT r.tenant, '{dim}', {hour}, {value}, {sums} FROM request_logs r "
                   f"WHERE r.start_time IS NOT NULL GROUP BY r.tenant, {hour}" + (f", {value}" if column else ""))
    return out + _histograms_from_records(dialect, HOUR, HISTOGRAM_DIMENSIONS)


def _histograms_from_records(dialect: str, grain: Grain, dims: tuple[str, ...]) -> list[str]:
    out = []
    t, start = grain.column, _start(dialect, "r.start_time", grain.width)
    for dim in dims:
        column = DIMENSIONS[dim]
        value = "''" if column is None else f"COALESCE(r.{column}, '')"
        out.append(f"INSERT INTO {grain.latency} (tenant, dim, {t}, value, bin, n) "
                   f"SELECT tenant, '{dim}', {t}, value, bin, COUNT(*) FROM "
                   f"(SELECT r.tenant AS tenant, {start} AS {t}, {value} AS value, {_bin('r.latency')} AS bin "
                   f"FROM request_logs r WHERE r.start_time IS NOT NULL AND r.latency IS NOT NULL) x "
                   f"GROUP BY tenant, {t}, value, bin")
    return out


@functools.cache
def lock(dialect: str) -> tuple[str, ...]:
    """What a transaction that inserts records runs first (PostgreSQL: one writer at a time inserts and
    rolls up records; an insert of a script waits for it). SQLite's writers are one at a time anyway."""
    return (f"LOCK TABLE {UNROLLED} IN SHARE ROW EXCLUSIVE MODE",) if dialect == "postgres" else ()


#: What a record's roll-up needs, in this order (:func:`fold`'s rows).
FIELDS = ("unique_id", "tenant", "start_time", *(c for c in DIMENSIONS.values() if c), "status_code",
          "prompt_tokens", "completion_tokens", "total_request_tokens", "cost", "cache_hit", "latency")
#: The records noted and not rolled up yet, with those fields.
NOTED = f"SELECT {', '.join(FIELDS)} FROM request_logs WHERE unique_id IN (SELECT unique_id FROM {UNROLLED})"


def _upsert(table: str, key: tuple[str, ...], added: tuple[str, ...]) -> str:
    columns = (*key, *added)
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(f'${i + 1}' for i in range(len(columns)))}) "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET " + ", ".join(f"{n} = {table}.{n} + excluded.{n}" for n in added))


def fold(rows: Iterable[Sequence[Any]], columns: Sequence[str] = FIELDS) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """The upserts (statement, parameter rows) that add ``rows`` (records with a start time, their
    ``columns`` named) to both grains: one per roll-up row they touch, not one per record and row (a
    batch of a model's requests touches a few dozen). The sums are those of migrations 20/21's
    trigger, the bin the one whose lower bound is the greatest not above the latency."""
    f = {column: i for i, column in enumerate(columns)}
    dims = [(d, None if c is None else f[c]) for d, c in DIMENSIONS.items()]
    sums: dict[tuple[Any, ...], list[Any]] = {}
    histograms: dict[tuple[Any, ...], int] = {}
    for row in rows:
        tenant, start, latency, status = row[f["tenant"]], row[f["start_time"]], row[f["latency"]], row[f["status_code"]]
        added = (1, 1 if status is not None and status >= 400 else 0, row[f["prompt_tokens"]] or 0,
                 row[f["completion_tokens"]] or 0, row[f["total_request_tokens"]] or 0, row[f["cost"]] or 0.0,
                 1 if row[f["cache_hit"]] else 0)
        bin_ = None if latency is None else max(bisect.bisect_right(LOWER, latency) - 1, 0)
        for grain in (HOUR, DAY):
            t = int(start // grain.width) * grain.width
            for dim, i in dims:
                value = "" if i is None else (row[i] or "")
                key = (grain.sums, tenant, dim, t, value)
                total = sums.get(key)
                if total is None:
                    sums[key] = list(added)
                else:
                    for k, v in enumerate(added):
                        total[k] += v
                if bin_ is not None and dim in grain.histograms:
                    key = (grain.latency, tenant, dim, t, value, bin_)
                    histograms[key] = histograms.get(key, 0) + 1
    out = []
    for grain in (HOUR, DAY):
        key = ("tenant", "dim", grain.column, "value")
        out.append((_upsert(grain.sums, key, tuple(SUM_COLUMNS)),
                    sorted((*k[1:], *v) for k, v in sums.items() if k[0] == grain.sums)))
        out.append((_upsert(grain.latency, (*key, "bin"), ("n",)),
                    sorted((*k[1:], n) for k, n in histograms.items() if k[0] == grain.latency)))
    return out


def backfill_daily(dialect: str) -> list[str]:
    """The daily rows from the hourly ones (migration 21): a day is the sum of its 24 hours, exactly.
    Hours are whole non-negative seconds, so integer division is the same on both databases. The
    customers' daily histograms, which have no hourly ones, from the records."""
    day = f"({HOUR.column} / {DAY.width}) * {DAY.width}"
    sums = ", ".join(f"SUM({c})" for c in SUM_COLUMNS)
    return [
        f"INSERT INTO {DAILY} (tenant, dim, day, value, {', '.join(SUM_COLUMNS)}) "
        f"SELECT tenant, dim, {day}, value, {sums} FROM {HOURLY} GROUP BY tenant, dim, {day}, value",
        f"INSERT INTO {LATENCY_DAILY} (tenant, dim, day, value, bin, n) "
        f"SELECT tenant, dim, {day}, value, bin, SUM(n) FROM {LATENCY} GROUP BY tenant, dim, {day}, value, bin",
        *_histograms_from_records(dialect, DAY, tuple(d for d in DAY.histograms if d not in HOUR.histograms)),
    ]


def migration(version: int) -> Migration:
    """Migration 20: the hourly roll-up, its trigger, the records already stored rolled up."""
    return Migration(version, sqlite=[*_tables("sqlite"), *backfill("sqlite"), *trigger("sqlite", (HOUR,))],
                     postgres=[*_tables("postgres"), *backfill("postgres"), *trigger("postgres", (HOUR,))])


# One customer's days of latency (a customer's page): the primary key orders by day before value.
_DAILY_LATENCY_VALUE = f"CREATE INDEX IF NOT EXISTS {LATENCY_DAILY}_value ON {LATENCY_DAILY} (tenant, dim, value, day)"


def daily_migration(version: int) -> Migration:
    """Migration 21: the daily roll-up beside the hourly one, one trigger keeping both, the days so far
    summed from the hours. On PostgreSQL the records table is locked against writes (SHARE) first: an
    insert of another replica waits until the new trigger keeps both, and no hour is missed by the days."""
    return Migration(
        version,
        sqlite=[*_grain_tables("sqlite", DAY), _DAILY_LATENCY_VALUE, "DROP TRIGGER IF EXISTS request_logs_rollup",
                *trigger("sqlite", (HOUR, DAY)), *backfill_daily("sqlite")],
        postgres=["LOCK TABLE request_logs IN SHARE MODE", *_grain_tables("postgres", DAY), _DAILY_LATENCY_VALUE,
                  *trigger("postgres", (HOUR, DAY)), *backfill_daily("postgres"),
                  f"ANALYZE {DAILY}", f"ANALYZE {LATENCY_DAILY}"],  # statistics now, not at autovacuum's pass
    )


def noting_migration(version: int) -> Migration:
    """Migration 23: the trigger notes the id of each record inserted, for the writer to roll up per
    batch (:func:`fold`), instead of seventeen upserts per record."""
    note = f"INSERT INTO {UNROLLED} (unique_id) VALUES (NEW.unique_id) ON CONFLICT DO NOTHING"
    return Migration(
        version,
        sqlite=[f"CREATE TABLE IF NOT EXISTS {UNROLLED} (unique_id TEXT PRIMARY KEY) WITHOUT ROWID",
                "DROP TRIGGER IF EXISTS request_logs_rollup",
                "CREATE TRIGGER request_logs_rollup AFTER INSERT ON request_logs "
                f"WHEN NEW.start_time IS NOT NULL BEGIN {note}; END"],
        postgres=[f"CREATE TABLE IF NOT EXISTS {UNROLLED} (unique_id TEXT PRIMARY KEY)",
                  "CREATE OR REPLACE FUNCTION request_logs_rollup() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                  f"IF NEW.start_time IS NOT NULL THEN {note}; END IF; RETURN NULL; END $$"],
    )


def spans(start: float | None, bucket_width: int | None) -> list[tuple[Grain, int | None, int | None]]:
    """Which roll-up rows answer a query from ``start`` (a whole hour, or None): (grain, from, before).
    Hour buckets read hours; otherwise the hours up to the next UTC midnight, then days."""
    if bucket_width == HOUR.width:
        return [(HOUR, None if start is None else int(start), None)]
    if start is None or start % DAY.width == 0:
        return [(DAY, None if start is None else int(start), None)]
    midnight = int(math.ceil(start / DAY.width) * DAY.width)
    return [(HOUR, int(start), midnight), (DAY, midnight, None)]


def plan(query: Any, bucket: str | None, group_by: str | None, percentiles: bool,
         aliases: dict[str, str]) -> tuple[str, str | None] | None:
    """(dimension, value filtered on or None) when the roll-up answers this usage query exactly; None
    when the records must be read."""
    if query.end_time is not None or (query.start_time is not None and query.start_time % 3600 != 0):
        return None
    dim: str = group_by or ""
    value: str | None = None
    if len(query.filters) > 1:
        return None
    if query.filters:
        field, op, given = query.filters[0]
        filtered = FILTER_DIMENSIONS.get(aliases.get(field, field))
        # "" would also match the records without a value (stored as "" in the roll-up).
        if filtered is None or op not in ("", "eq", "exact") or isinstance(given, (list, bool)) or given in (None, ""):
            return None
        if group_by is not None and group_by != filtered:
            return None
        dim, value = filtered, str(given)
    if percentiles and any(dim not in grain.histograms for grain, _, _ in spans(query.start_time, _WIDTHS.get(bucket))):
        return None
    return dim, value


_WIDTHS = {"hour": HOUR.width, "day": DAY.width}
