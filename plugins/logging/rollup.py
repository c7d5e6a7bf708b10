"""The hourly roll-up of ``request_logs``: what the usage aggregates read instead of the records.

Two tables, kept by a trigger on every insert into ``request_logs`` (in the database itself: every
writer, replica or script, keeps them, and only rows actually inserted count: an idempotent replay,
``ON CONFLICT (unique_id) DO NOTHING``, fires no trigger on SQLite nor on PostgreSQL):

- ``request_logs_hourly``: per (tenant, dimension, UTC hour, value) the sums the usage view shows
  (requests, errors, tokens, cost, cache hits). A record adds to five rows, one per dimension:
  ``""`` (all records), ``model``, ``provider``, ``customer``, ``key`` (its value ``""`` when unset).
- ``request_logs_latency``: per (tenant, dimension, hour, value, bin) how many latencies fell in that
  bin, for the dimensions ``""``, ``model`` and ``provider`` (customers and keys are too many for
  histograms: their percentiles come from the records). Bins are log-spaced, 10% wide, from 1 ms to
  an hour (``request_logs_latency_bins``; bin 0 is below 1 ms, the last one above an hour). A
  percentile is the nearest-rank one's bin, reported as the bin's geometric middle: within 4.9% of
  the exact value (below 1 ms: 0.5 ms).

The records stay the source of truth: a query the roll-up cannot answer (other filters, a time range
not on whole hours, an end time, percentiles of customers) reads them as before. Records changed by
the logs API's PATCH (metadata, note, feedback) change nothing rolled up.
"""

from __future__ import annotations

import math
from typing import Any

from respan_gateway.database import Migration

HOURLY = "request_logs_hourly"
LATENCY = "request_logs_latency"
BINS = "request_logs_latency_bins"

#: Dimension name -> request_logs column; "" is every record of the tenant.
DIMENSIONS = {"": None, "model": "model", "provider": "provider_id", "customer": "customer_identifier", "key": "key_id"}
#: The dimensions with latency histograms.
HISTOGRAM_DIMENSIONS = ("", "model", "provider")
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


def _tables(dialect: str) -> list[str]:
    integer = "BIGINT" if dialect == "postgres" else "INTEGER"
    real = "DOUBLE PRECISION" if dialect == "postgres" else "REAL"
    clustered = "" if dialect == "postgres" else " WITHOUT ROWID"
    sums = ", ".join(f"{name} {real if name == 'cost' else integer} NOT NULL" for name in SUM_COLUMNS)
    return [
        f"CREATE TABLE IF NOT EXISTS {HOURLY} (tenant TEXT NOT NULL, dim TEXT NOT NULL, hour {integer} NOT NULL, "
        f"value TEXT NOT NULL, {sums}, PRIMARY KEY (tenant, dim, hour, value)){clustered}",
        # One customer's (or key's, or model's) hours: the customer page.
        f"CREATE INDEX IF NOT EXISTS {HOURLY}_value ON {HOURLY} (tenant, dim, value, hour)",
        f"CREATE TABLE IF NOT EXISTS {LATENCY} (tenant TEXT NOT NULL, dim TEXT NOT NULL, hour {integer} NOT NULL, "
        f"value TEXT NOT NULL, bin INTEGER NOT NULL, n {integer} NOT NULL, "
        f"PRIMARY KEY (tenant, dim, hour, value, bin)){clustered}",
        f"CREATE TABLE IF NOT EXISTS {BINS} (lower {real} PRIMARY KEY, bin INTEGER NOT NULL UNIQUE)",
        # repr() of a float is exact: both databases hold the very bounds Python computed.
        f"INSERT INTO {BINS} (lower, bin) VALUES " + ", ".join(f"({lower!r}, {i})" for i, lower in enumerate(LOWER)),
    ]


def _hour(dialect: str, column: str) -> str:
    return f"CAST(floor({column} / 3600) * 3600 AS BIGINT)" if dialect == "postgres" else \
        f"CAST({column} / 3600 AS INTEGER) * 3600"


def _bin(column: str) -> str:
    return f"(SELECT b.bin FROM {BINS} b WHERE b.lower <= {column} ORDER BY b.lower DESC LIMIT 1)"


def _dims(dialect: str, names: tuple[str, ...] | list[str]) -> str:
    """The dimension rows of the NEW record, as a derived table d(dim, value)."""
    values = [("''" if DIMENSIONS[d] is None else f"COALESCE(NEW.{DIMENSIONS[d]}, '')") for d in names]
    if dialect == "postgres":
        return "(VALUES " + ", ".join(f"('{d}', {v})" for d, v in zip(names, values)) + ") AS d(dim, value)"
    return "(" + " UNION ALL ".join(f"SELECT '{d}' AS dim, {v} AS value" for d, v in zip(names, values)) + ") AS d"


def _upserts(dialect: str) -> list[str]:
    sums = _sums()
    hourly = (
        f"INSERT INTO {HOURLY} (tenant, dim, hour, value, {', '.join(SUM_COLUMNS)}) "
        f"SELECT NEW.tenant, d.dim, {_hour(dialect, 'NEW.start_time')}, d.value, {', '.join(e for _, e in sums)} "
        f"FROM {_dims(dialect, list(DIMENSIONS))} WHERE true "  # WHERE: SQLite's INSERT ... SELECT ... ON CONFLICT needs one
        f"ON CONFLICT (tenant, dim, hour, value) DO UPDATE SET "
        + ", ".join(f"{n} = {HOURLY}.{n} + excluded.{n}" for n in SUM_COLUMNS)
    )
    latency = (
        f"INSERT INTO {LATENCY} (tenant, dim, hour, value, bin, n) "
        f"SELECT NEW.tenant, d.dim, {_hour(dialect, 'NEW.start_time')}, d.value, {_bin('NEW.latency')}, 1 "
        f"FROM {_dims(dialect, HISTOGRAM_DIMENSIONS)} WHERE NEW.latency IS NOT NULL "
        f"ON CONFLICT (tenant, dim, hour, value, bin) DO UPDATE SET n = {LATENCY}.n + 1"
    )
    return [hourly, latency]


def _trigger(dialect: str) -> list[str]:
    hourly, latency = _upserts(dialect)
    if dialect == "sqlite":
        return [f"CREATE TRIGGER IF NOT EXISTS request_logs_rollup AFTER INSERT ON request_logs "
                f"WHEN NEW.start_time IS NOT NULL BEGIN {hourly}; {latency}; END"]
    return [
        "CREATE OR REPLACE FUNCTION request_logs_rollup() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF NEW.start_time IS NOT NULL THEN {hourly}; {latency}; END IF; RETURN NULL; END $$",
        "CREATE TRIGGER request_logs_rollup AFTER INSERT ON request_logs FOR EACH ROW EXECUTE FUNCTION request_logs_rollup()",
    ]


def _backfill(dialect: str) -> list[str]:
    """The records already stored when the roll-up is created (once, in the migration)."""
    out = []
    hour = _hour(dialect, "r.start_time")
    sums = ", ".join(f"SUM({e})" for _, e in _sums("r"))
    for dim, column in DIMENSIONS.items():
        value = "''" if column is None else f"COALESCE(r.{column}, '')"
        out.append(f"INSERT INTO {HOURLY} (tenant, dim, hour, value, {', '.join(SUM_COLUMNS)}) "
                   f"SELECT r.tenant, '{dim}', {hour}, {value}, {sums} FROM request_logs r "
                   f"WHERE r.start_time IS NOT NULL GROUP BY r.tenant, {hour}" + (f", {value}" if column else ""))
    for dim in HISTOGRAM_DIMENSIONS:
        column = DIMENSIONS[dim]
        value = "''" if column is None else f"COALESCE(r.{column}, '')"
        out.append(f"INSERT INTO {LATENCY} (tenant, dim, hour, value, bin, n) "
                   f"SELECT tenant, '{dim}', hour, value, bin, COUNT(*) FROM "
                   f"(SELECT r.tenant AS tenant, {hour} AS hour, {value} AS value, {_bin('r.latency')} AS bin "
                   f"FROM request_logs r WHERE r.start_time IS NOT NULL AND r.latency IS NOT NULL) x "
                   f"GROUP BY tenant, hour, value, bin")
    return out


def migration(version: int) -> Migration:
    return Migration(version, sqlite=[*_tables("sqlite"), *_backfill("sqlite"), *_trigger("sqlite")],
                     postgres=[*_tables("postgres"), *_backfill("postgres"), *_trigger("postgres")])


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
    if percentiles and dim not in HISTOGRAM_DIMENSIONS:
        return None
    return dim, value
