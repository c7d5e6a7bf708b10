"""The ``request_logs`` table in the gateway's database, and the queries of the logs API.

Inserts are idempotent (``ON CONFLICT (unique_id) DO NOTHING``): a batch that is written again after a
timeout, or replayed from the spill file, never duplicates a record.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import operator
from collections.abc import Sequence
from typing import Any

import msgspec

from respan_gateway import BadRequest
from respan_gateway.database import Database, Migration, RowRejected, Transaction
from respan_gateway.hookspecs import LogQuery, UsageBucket
from respan_gateway.timestamps import parse_iso

from . import meta_index, rollup
from .record import COLUMNS, JSON_COLUMNS, KINDS, MESSAGES_IN_PROMPT, LogRecord, to_row

TABLE = "request_logs"

_SQL_TYPES = {
    "sqlite": {"text": "TEXT", "int": "INTEGER", "float": "REAL", "bool": "INTEGER", "time": "REAL", "json": "TEXT"},
    "postgres": {"text": "TEXT", "int": "BIGINT", "float": "DOUBLE PRECISION", "bool": "BOOLEAN",
                 "time": "DOUBLE PRECISION", "json": "JSONB"},
}
_INDEXES = [("tenant_time", "tenant, start_time"), ("tenant_customer", "tenant, customer_identifier, start_time"),
            ("tenant_model", "tenant, model, start_time"), ("tenant_thread", "tenant, thread_identifier"),
            ("trace", "trace_unique_id")]


#: Columns later migrations add (migration 1 creates the table without them, as it always did).
_ADDED_LATER = frozenset({"prompt_name", "prompt_messages_template"})


def _create(dialect: str) -> str:
    types = _SQL_TYPES[dialect]
    cols = ",\n  ".join(
        f"{name} {types[KINDS[name]]}" + (" PRIMARY KEY" if name == "unique_id" else "")
        for name in COLUMNS if name not in _ADDED_LATER
    )
    indexes = ";\n".join(f"CREATE INDEX IF NOT EXISTS {TABLE}_{n} ON {TABLE} ({c})" for n, c in _INDEXES)
    return f"CREATE TABLE IF NOT EXISTS {TABLE} (\n  {cols}\n);\n{indexes}"


# The usage aggregates (GROUP BY time bucket, by model/provider/customer) read only this index, not the
# wide rows: 5x faster on SQLite over 1M records (plugins/dashboard/README.md, bench/dashboard_1m.py).
_USAGE_INDEX = (f"CREATE INDEX IF NOT EXISTS {TABLE}_usage ON {TABLE} (tenant, start_time, model, provider_id, "
                "customer_identifier, status_code, latency, prompt_tokens, completion_tokens, total_request_tokens, "
                "cost, cache_hit)")

# The prompt fields of Respan's log schema beyond prompt_id/version/variables (prompt management).
_PROMPT_COLUMNS = {"sqlite": f"ALTER TABLE {TABLE} ADD COLUMN prompt_name TEXT;\n"
                             f"ALTER TABLE {TABLE} ADD COLUMN prompt_messages_template TEXT",
                   "postgres": f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS prompt_name TEXT;\n"
                               f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS prompt_messages_template JSONB"}

MIGRATIONS = [
    Migration(1, sqlite=_create("sqlite"), postgres=_create("postgres")),
    Migration(2, sqlite=_USAGE_INDEX, postgres=_USAGE_INDEX),
    Migration(3, sqlite=_PROMPT_COLUMNS["sqlite"], postgres=_PROMPT_COLUMNS["postgres"]),
    # The hourly roll-up and latency histograms the usage aggregates read (rollup.py). Numbered 20, not
    # 3, so that a migration 3 another change adds to request_logs does not collide with it.
    rollup.migration(20),
    # The daily roll-up beside it: a month is 30 rows per value, not 720 (plugins/dashboard/README.md).
    rollup.daily_migration(21),
    # The metadata values' index: a metadata filter reads it, not the JSON of every record.
    meta_index.migration(22),
    # The trigger notes the records inserted; the writer rolls them up per batch (rollup.fold).
    rollup.noting_migration(23),
]


@functools.lru_cache(maxsize=256)
def _insert(present: tuple[bool, ...]) -> str:
    """The INSERT of the columns ``present`` marks (the others are NULL: no column has a default)."""
    names = list(itertools.compress(COLUMNS, present))
    return (f"INSERT INTO {TABLE} ({', '.join(names)}) VALUES ({', '.join(f'${i + 1}' for i in range(len(names)))}) "
            "ON CONFLICT (unique_id) DO NOTHING")


_INSERT = _insert((True,) * len(COLUMNS))  # a whole row (what a script writes)
_NONES = (None,) * len(COLUMNS)


def _by_columns(rows: Sequence[Sequence[Any]]) -> dict[tuple[bool, ...], list[list[Any]]]:
    """The rows grouped by which columns hold a value, each row cut to those: a record leaves about
    half of its 71 columns NULL, and binding only the rest halves SQLite's work per row (~18 -> 9 us)."""
    groups: dict[tuple[bool, ...], list[list[Any]]] = {}
    for row in rows:
        present = tuple(map(operator.is_not, row, _NONES))
        group = groups.get(present)
        if group is None:
            group = groups[present] = []
        group.append(list(itertools.compress(row, present)))
    return groups


# Sort keys the list API accepts besides the columns themselves.
_SORT_ALIASES = {"id": "start_time", "all_tokens": "total_request_tokens", "ttft": "time_to_first_token",
                 "generation_time": "latency", "created_at": "start_time"}
_FILTER_ALIASES = {"all_tokens": "total_request_tokens", "ttft": "time_to_first_token",
                   "generation_time": "latency", "provider": "provider_id", "customer_user_unique_id": "customer_identifier"}
_BUCKETS = {"hour": 3600, "day": 86400}
_GROUPS = {"model": "model", "provider": "provider_id", "customer": "customer_identifier", "key": "key_id"}
OPERATORS = frozenset({"", "eq", "exact", "iexact", "lt", "lte", "gt", "gte", "contains", "icontains",
                       "startswith", "endswith", "in", "isnull", "not"})
_decode = msgspec.json.decode
_ID = COLUMNS.index("unique_id")


class RequestLogStore:
    def __init__(self, database: Database) -> None:
        self.db = database

    async def insert(self, records: list[LogRecord]) -> None:
        """Insert ``records`` in one transaction; :class:`RowRejected` when one of them cannot be stored."""
        try:
            rows = [to_row(r) for r in records]
        except UnicodeDecodeError as exc:  # JSON passed through as bytes that are not UTF-8
            raise RowRejected(f"a JSON field is not valid UTF-8 ({exc.reason})") from None
        # The records the insert noted (not those it found stored already) are rolled up in the same
        # transaction: none is left unrolled after it.
        groups = _by_columns(rows)

        async def insert(tx: Transaction) -> None:
            for present, values in groups.items():
                await tx.executemany(_insert(present), values)
            await self._fold(tx, rows)

        await self.db.transaction(insert, before=rollup.lock(self.db.dialect))

    @staticmethod
    async def _fold(tx: Transaction, rows: Sequence[list[Any]] = ()) -> None:
        """Roll up the records noted in ``request_logs_unrolled``: from ``rows`` (just inserted) when
        they are all there, else (a script's or an earlier version's inserts too) as stored."""
        noted = await tx.fetch(f"SELECT unique_id FROM {rollup.UNROLLED}")
        if not noted:
            return
        mine = {row[_ID]: row for row in rows}
        if all(n[0] in mine for n in noted):
            upserts = rollup.fold((mine[n[0]] for n in noted), COLUMNS)
        else:
            upserts = rollup.fold(await tx.fetch(rollup.NOTED))
        for sql, params in upserts:
            await tx.executemany(sql, params)
        await tx.execute(f"DELETE FROM {rollup.UNROLLED}")

    async def _fold_left(self) -> None:
        """Roll up what another writer (a script, a replica of an earlier version) inserted and left noted."""
        if await self.db.fetchval(f"SELECT EXISTS (SELECT 1 FROM {rollup.UNROLLED})"):
            await self.db.transaction(self._fold, before=rollup.lock(self.db.dialect))

    # -- reads --------------------------------------------------------------------------------
    async def get(self, tenant: str, unique_id: str) -> dict[str, Any] | None:
        rows = await self.db.fetch(f"SELECT * FROM {TABLE} WHERE tenant = $1 AND unique_id = $2", tenant, unique_id)
        return to_api(rows[0]) if rows else None

    async def list(self, tenant: str, query: LogQuery) -> tuple[int, list[dict[str, Any]]]:
        where, args = self._where(tenant, query)
        only = _only_metadata(query)
        if only is not None:  # the index alone counts them (one row per record and key)
            key, values = only
            count_args: list[Any] = [tenant, key, *[_coerce(f"metadata__{key}", "meta", v) for v in values]]
            total = await self.db.fetchval(meta_index.count(len(values)), *count_args)
        else:
            total = await self._count(tenant, query, where, args)
        if total and total > meta_index.FEW and any(_is_metadata_equal(*f) for f in query.filters):
            # Many matches: walk the records in order and probe the index for each, which finds a
            # page after a few rows; few matches: fetch them from the index (the form above) and sort.
            where, args = self._where(tenant, query, probe=True)
        order = order_by(query)
        args += [query.page_size, (query.page - 1) * query.page_size]
        rows = await self.db.fetch(
            f"SELECT * FROM {TABLE} WHERE {where} ORDER BY {order} LIMIT ${len(args) - 1} OFFSET ${len(args)}", *args
        )
        return int(total or 0), [to_api(r) for r in rows]

    async def _count(self, tenant: str, query: LogQuery, where: str, args: list[Any]) -> int:
        """How many records match: from the roll-up when it answers (no filter, or one on a model,
        provider, customer or key; from a whole hour), plus the records without a start time, which it
        does not hold; else a COUNT over the records."""
        served = rollup.plan(query, None, None, False, _FILTER_ALIASES)
        if served is None:
            return int(await self.db.fetchval(f"SELECT COUNT(*) FROM {TABLE} WHERE {where}", *args) or 0)
        rolled = sum(b.requests for b in await self._rolled_up(tenant, query, None, None, False, *served))
        if query.start_time is not None:
            return rolled
        unstarted = await self.db.fetchval(f"SELECT COUNT(*) FROM {TABLE} WHERE {where} AND start_time IS NULL", *args)
        return rolled + int(unstarted or 0)

    async def summary(self, tenant: str, query: LogQuery) -> dict[str, Any]:
        where, args = self._where(tenant, query)
        rows = await self.db.fetch(
            "SELECT COUNT(*) AS number_of_requests, COALESCE(SUM(cost), 0) AS total_cost, "
            "COALESCE(SUM(total_request_tokens), 0) AS total_tokens, "
            "COALESCE(SUM(prompt_tokens), 0) AS total_prompt_tokens, "
            "COALESCE(SUM(completion_tokens), 0) AS total_completion_tokens, "
            "COALESCE(SUM(CASE WHEN status_code >= 400 THEN 1 ELSE 0 END), 0) AS number_of_errors, "
            "AVG(latency) AS average_latency, AVG(time_to_first_token) AS average_time_to_first_token "
            f"FROM {TABLE} WHERE {where}", *args,
        )
        row = rows[0]
        return {
            "number_of_requests": int(row["number_of_requests"]),
            "total_cost": float(row["total_cost"]),
            "total_tokens": int(row["total_tokens"]),
            "total_prompt_tokens": int(row["total_prompt_tokens"]),
            "total_completion_tokens": int(row["total_completion_tokens"]),
            "number_of_errors": int(row["number_of_errors"]),
            "average_latency": float(row["average_latency"]) if row["average_latency"] is not None else None,
            "average_time_to_first_token": (float(row["average_time_to_first_token"])
                                            if row["average_time_to_first_token"] is not None else None),
        }

    async def usage(self, tenant: str, query: LogQuery, *, bucket: str | None,
                    group_by: str | None = None, percentiles: bool = True) -> list[UsageBucket]:
        """Aggregates per time bucket and group (see RequestLogReader.usage): from the hourly and daily
        roll-up when it answers the query exactly (rollup.plan), else in one statement over the records."""
        width = _BUCKETS.get(bucket or "")
        if bucket is not None and width is None:
            raise BadRequest(f"`bucket` must be one of {', '.join(_BUCKETS)}", param="bucket")
        if group_by is not None and group_by not in _GROUPS:
            raise BadRequest(f"`group_by` must be one of {', '.join(_GROUPS)}", param="group_by")
        served = rollup.plan(query, bucket, group_by, percentiles, _FILTER_ALIASES)
        if served is not None:
            return await self._rolled_up(tenant, query, width, group_by, percentiles, *served)
        where, args = self._where(tenant, query)
        pg = self.db.dialect == "postgres"
        # The width is one of two literals: no user text reaches these expressions.
        bucket_expr = "0" if width is None else (
            f"floor(start_time / {width}) * {width}" if pg else f"CAST(start_time / {width} AS INTEGER) * {width}")
        group_expr = f"COALESCE({_GROUPS[group_by]}, '')" if group_by else "''"
        totals = (
            "COUNT(*) AS requests, SUM(CASE WHEN status_code >= 400 THEN 1 ELSE 0 END) AS errors, "
            "COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens, COALESCE(SUM(completion_tokens), 0) AS completion_tokens, "
            "COALESCE(SUM(total_request_tokens), 0) AS total_tokens, COALESCE(SUM(cost), 0) AS cost, "
            "SUM(CASE WHEN cache_hit THEN 1 ELSE 0 END) AS cache_hits"
        )
        if not percentiles:
            sql = (f"SELECT {bucket_expr} AS bucket, {group_expr} AS grp, {totals}, NULL AS p50, NULL AS p95 "
                   f"FROM {TABLE} WHERE {where} GROUP BY 1, 2 ORDER BY 1, 2")
        elif pg:
            # percentile_disc is nearest-rank, as the SQLite form below: both databases give the same figures.
            sql = (
                f"SELECT {bucket_expr} AS bucket, {group_expr} AS grp, {totals}, "
                "percentile_disc(0.5) WITHIN GROUP (ORDER BY latency) AS p50, "
                "percentile_disc(0.95) WITHIN GROUP (ORDER BY latency) AS p95 "
                f"FROM {TABLE} WHERE {where} GROUP BY 1, 2 ORDER BY 1, 2"
            )
        else:
            # SQLite has no percentile aggregate: rank the latencies within each bucket and group (window
            # functions), the p-th percentile being the smallest latency whose rank reaches p * count.
            sql = (
                f"WITH r AS (SELECT {bucket_expr} AS bucket, {group_expr} AS grp, status_code, prompt_tokens, "
                f"completion_tokens, total_request_tokens, cost, cache_hit, latency FROM {TABLE} WHERE {where}), "
                f"t AS (SELECT bucket, grp, {totals} FROM r GROUP BY bucket, grp), "
                "k AS (SELECT bucket, grp, latency, ROW_NUMBER() OVER (PARTITION BY bucket, grp ORDER BY latency) AS rn, "
                "COUNT(*) OVER (PARTITION BY bucket, grp) AS n FROM r WHERE latency IS NOT NULL), "
                "p AS (SELECT bucket, grp, MIN(CASE WHEN rn >= 0.5 * n THEN latency END) AS p50, "
                "MIN(CASE WHEN rn >= 0.95 * n THEN latency END) AS p95 FROM k GROUP BY bucket, grp) "
                "SELECT t.*, p.p50, p.p95 FROM t LEFT JOIN p ON p.bucket = t.bucket AND p.grp = t.grp "
                "ORDER BY t.bucket, t.grp"
            )
        rows = await self.db.fetch(sql, *args)
        return [
            UsageBucket(
                bucket=float(r["bucket"]), group=str(r["grp"]), requests=int(r["requests"]), errors=int(r["errors"] or 0),
                prompt_tokens=int(r["prompt_tokens"]), completion_tokens=int(r["completion_tokens"]),
                total_tokens=int(r["total_tokens"]), cost=float(r["cost"]), cache_hits=int(r["cache_hits"] or 0),
                p50_latency=float(r["p50"]) if r["p50"] is not None else None,
                p95_latency=float(r["p95"]) if r["p95"] is not None else None,
            )
            for r in rows
        ]

    async def _rolled_up(self, tenant: str, query: LogQuery, width: int | None, group_by: str | None,
                         percentiles: bool, dim: str, value: str | None) -> list[UsageBucket]:
        """The usage aggregates from the roll-up: a few rows per hour or day instead of every record
        (rollup.spans: hourly rows for hour buckets and up to the first midnight, daily rows after)."""
        await self._fold_left()
        base: list[Any] = [tenant, dim]
        where = "tenant = $1 AND dim = $2"
        if value is not None:
            base.append(value)
            where += f" AND value = ${len(base)}"

        def rows_of(table: str, columns: str, args: list[Any]) -> str:
            """The rows of ``table`` (hourly or daily) in range, their time column as ``t``, UNION ALL."""
            parts = []
            for grain, first, before in rollup.spans(query.start_time, width):
                t, cond = grain.column, where
                for op, bound in ((">=", first), ("<", before)):
                    if bound is not None:
                        args.append(bound)
                        cond += f" AND {t} {op} ${len(args)}"
                parts.append(f"SELECT {t} AS t, value, {columns} FROM {getattr(grain, table)} WHERE {cond}")
            return " UNION ALL ".join(parts)

        # Integer division of whole hours or days: the same buckets as the records' floor(start_time / width).
        bucket_expr = "0" if width is None else f"(t / {width}) * {width}"
        group_expr = "value" if group_by else "''"
        sums = ", ".join(f"SUM({c}) AS {c}" for c in rollup.SUM_COLUMNS)
        args = list(base)
        rows = await self.db.fetch(
            f"SELECT {bucket_expr} AS bucket, {group_expr} AS grp, {sums} "
            f"FROM ({rows_of('sums', ', '.join(rollup.SUM_COLUMNS), args)}) s GROUP BY 1, 2 ORDER BY 1, 2", *args)
        bins: dict[tuple[float, str], tuple[int | None, int | None]] = {}
        if percentiles:
            args = list(base)
            # The nearest-rank percentile's bin: the first whose running count reaches p * n.
            hist = await self.db.fetch(
                f"WITH h AS (SELECT {bucket_expr} AS bucket, {group_expr} AS grp, bin, SUM(n) AS n "
                f"FROM ({rows_of('latency', 'bin, n', args)}) s GROUP BY 1, 2, 3), "
                "c AS (SELECT bucket, grp, bin, SUM(n) OVER (PARTITION BY bucket, grp ORDER BY bin) AS cum, "
                "SUM(n) OVER (PARTITION BY bucket, grp) AS total FROM h) "
                "SELECT bucket, grp, MIN(CASE WHEN cum >= 0.5 * total THEN bin END) AS p50, "
                "MIN(CASE WHEN cum >= 0.95 * total THEN bin END) AS p95 FROM c GROUP BY bucket, grp", *args)
            bins = {(float(h["bucket"]), str(h["grp"])): (h["p50"], h["p95"]) for h in hist}

        def latency(b: int | None) -> float | None:
            return rollup.representative(int(b)) if b is not None else None

        out = []
        for r in rows:
            p50, p95 = bins.get((float(r["bucket"]), str(r["grp"])), (None, None))
            out.append(UsageBucket(
                bucket=float(r["bucket"]), group=str(r["grp"]), requests=int(r["requests"]), errors=int(r["errors"]),
                prompt_tokens=int(r["prompt_tokens"]), completion_tokens=int(r["completion_tokens"]),
                total_tokens=int(r["total_tokens"]), cost=float(r["cost"]), cache_hits=int(r["cache_hits"]),
                p50_latency=latency(p50), p95_latency=latency(p95)))
        return out

    async def patch(self, tenant: str, unique_id: str, changes: dict[str, Any]) -> bool:
        sets, args = [], [tenant, unique_id]
        for name, value in changes.items():
            args.append(msgspec.json.encode(value).decode() if name in JSON_COLUMNS and value is not None else value)
            sets.append(f"{name} = ${len(args)}")
        changed = await self.db.execute(
            f"UPDATE {TABLE} SET {', '.join(sets)} WHERE tenant = $1 AND unique_id = $2", *args
        )
        return changed > 0

    # -- filters ------------------------------------------------------------------------------
    def _where(self, tenant: str, query: LogQuery, *, probe: bool = False) -> tuple[str, list[Any]]:
        """The SQL condition of ``query`` and its arguments (``$1`` the tenant). ``probe``: a metadata
        equality tests each record against the index instead of listing the index's records."""
        args: list[Any] = [tenant]
        clauses = []
        for name, op, value in query.filters:
            clauses.append(self._clause(name, op, value, args, probe))
        where = "tenant = $1"
        if query.start_time is not None:
            args.append(query.start_time)
            where += f" AND start_time >= ${len(args)}"
        if query.end_time is not None:
            args.append(query.end_time)
            where += f" AND start_time <= ${len(args)}"
        if clauses:
            joiner = " OR " if query.connector == "OR" else " AND "
            where += " AND (" + joiner.join(clauses) + ")"
        return where, args

    def _clause(self, field: str, op: str, value: Any, args: list[Any], probe: bool = False) -> str:
        pg = self.db.dialect == "postgres"
        if _is_metadata_equal(field, op, value):
            # A metadata value: from its index (meta_index.py), the same text the JSON expression gives.
            key = field.removeprefix("metadata__")
            values = value if isinstance(value, list) else [value]
            args.append(key)
            key_param = f"${len(args)}"
            params = []
            for v in values:
                args.append(_coerce(field, "meta", v))
                params.append(f"${len(args)}")
            return meta_index.clause(key_param, params, probe=probe, table=TABLE)
        kind, expr = _field_expr(field, pg, args)

        def param(v: Any) -> str:
            args.append(_coerce(field, kind, v))
            return f"${len(args)}"

        values = value if isinstance(value, list) else [value]
        if op == "isnull":
            flag = values[0] if values else True
            truthy = flag if isinstance(flag, bool) else str(flag).lower() in ("1", "true", "yes")
            return f"{expr} IS NULL" if truthy else f"{expr} IS NOT NULL"
        if not values:
            raise BadRequest(f"filter `{field}`: no value given", param="filters")
        if op in ("", "eq", "exact", "in", "not"):
            if len(values) == 1 and op != "in":
                test = f"{expr} = {param(values[0])}"
            else:
                test = f"{expr} IN ({', '.join(param(v) for v in values)})"
            return f"NOT ({expr} IS NOT NULL AND {test})" if op == "not" else test
        if op in ("lt", "lte", "gt", "gte"):
            sign = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}[op]
            return f"{expr} {sign} {param(values[0])}"
        # Text operators: on the text of the value, whatever the column's kind.
        args.append(str(values[0]))
        p = f"${len(args)}"
        if expr == "full_request" and op in ("contains", "icontains"):
            # The request's messages are stored in prompt_messages (record.MESSAGES_IN_PROMPT): look there too.
            args.append(MESSAGES_IN_PROMPT)
            stored_apart = (f"(full_request ->> 'messages') = ${len(args)}" if pg
                            else f"json_extract(full_request, '$.messages') = ${len(args)}")
            return (f"({_text_test(op, 'full_request', kind, p, pg)} OR "
                    f"({_text_test(op, 'prompt_messages', kind, p, pg)} AND {stored_apart}))")
        return _text_test(op, expr, kind, p, pg, field)


def _text_test(op: str, expr: str, kind: str, p: str, pg: bool, field: str = "") -> str:
    """A text operator's test of ``expr`` (a column or JSON expression) against the parameter ``p``."""
    text = expr if kind in ("text", "meta") else (f"CAST({expr} AS TEXT)" if not pg else f"({expr})::text")
    if op == "iexact":
        return f"LOWER({text}) = LOWER({p})"
    if op == "contains":
        return f"strpos({text}, {p}) > 0" if pg else f"instr({text}, {p}) > 0"
    if op == "icontains":
        return f"strpos(LOWER({text}), LOWER({p})) > 0" if pg else f"instr(LOWER({text}), LOWER({p})) > 0"
    if op == "startswith":
        return f"substr({text}, 1, length({p})) = {p}"
    if op == "endswith":
        return f"right({text}, length({p})) = {p}" if pg else f"substr({text}, -length({p})) = {p} AND length({p}) > 0"
    raise BadRequest(f"filter `{field}`: unknown operator `{op}`", param="filters")


def _is_metadata_equal(field: str, op: str, value: Any) -> bool:
    """A filter the metadata index answers: ``metadata__<key>`` equal to (or in) given values."""
    return (field.startswith("metadata__") and len(field) > len("metadata__") and op in ("", "eq", "exact", "in")
            and value not in (None, []))


def _only_metadata(query: LogQuery) -> tuple[str, list[Any]] | None:
    """(key, values) when ``query`` is one metadata equality and nothing else (no other filter, no range)."""
    if len(query.filters) != 1 or query.start_time is not None or query.end_time is not None:
        return None
    field, op, value = query.filters[0]
    if not _is_metadata_equal(field, op, value):
        return None
    return field.removeprefix("metadata__"), value if isinstance(value, list) else [value]


def _field_expr(field: str, pg: bool, args: list[Any]) -> tuple[str, str]:
    """(kind, SQL expression) of a filter field; metadata__<key> / properties__<key> read inside the JSON."""
    for prefix in ("metadata__", "properties__"):
        if field.startswith(prefix) and len(field) > len(prefix):
            column, key = prefix[:-2], field[len(prefix):]
            if pg:
                args.append(key)
                return "meta", f"({column} ->> ${len(args)})"
            args.append('$."' + key.replace('"', '\\"') + '"')
            return "meta", f"CAST(json_extract({column}, ${len(args)}) AS TEXT)"
    name = _FILTER_ALIASES.get(field, field)
    kind = KINDS.get(name)
    if kind is None:
        raise BadRequest(f"unknown filter field `{field}` (custom metadata is filtered as `metadata__<key>`)", param="filters")
    return kind, name


def _coerce(field: str, kind: str, value: Any) -> Any:
    try:
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "time":
            return parse_time(value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if kind == "json":
            return value if isinstance(value, str) else msgspec.json.encode(value).decode()
    except (TypeError, ValueError):
        raise BadRequest(f"filter `{field}`: {value!r} is not a valid {kind}", param="filters") from None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if value is not None else None


def parse_time(value: Any) -> float:
    """Epoch seconds from a number or an ISO 8601 string (UTC when no zone is given)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    return parse_iso(text)


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def to_api(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row as the logs API shows it: JSON decoded, booleans as booleans, times ISO 8601."""
    out: dict[str, Any] = {}
    for name in COLUMNS:
        value = row.get(name)
        kind = KINDS[name]
        if value is None:
            out[name] = None
        elif kind == "json":
            out[name] = _decode(value) if isinstance(value, (str, bytes)) else value
        elif kind == "bool":
            out[name] = bool(value)
        elif kind == "time":
            out[name] = iso(float(value))
        else:
            out[name] = value
    full, messages = out["full_request"], out["prompt_messages"]
    if isinstance(full, dict) and messages is not None and full.get("messages") == MESSAGES_IN_PROMPT:
        full["messages"] = messages  # stored once (record.MESSAGES_IN_PROMPT)
    out["id"] = out["unique_id"]
    return out


def order_by(query: LogQuery) -> str:
    key = query.sort_by.strip() or "-start_time"
    desc = key.startswith("-")
    name = key.lstrip("-+")
    name = _SORT_ALIASES.get(name, name)
    if KINDS.get(name) in (None, "json"):
        raise BadRequest(f"cannot sort by `{key}`", param="sort_by")
    direction = "DESC" if desc else "ASC"
    return f"{name} {direction}, unique_id {direction}"


def record_to_api(record: LogRecord) -> dict[str, Any]:
    """A record not yet written (still queued) in the API's shape."""
    row = dict(zip(COLUMNS, to_row(record)))
    return to_api(row)
