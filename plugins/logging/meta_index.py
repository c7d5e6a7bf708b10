"""``request_logs_metadata``: one row per (record, top-level metadata key), so that a filter on a metadata
value (``metadata__<key>`` equal to a value, the dashboard's metadata filter) reads an index instead of
the JSON of every record of the tenant.

Kept by triggers on insert and on an update of ``metadata`` (the logs API's PATCH), in the database
itself like the roll-up (rollup.py). A row holds the key and the value as text, as the filter compares
them: SQLite's ``CAST(json_extract(metadata, '$."key"') AS TEXT)``, PostgreSQL's ``metadata ->> key``
(``json_each`` / ``jsonb_each_text`` give the same text). Keys whose value is JSON null, and records
whose metadata is not a JSON object, have no row (such a filter matches nothing either way).
"""

from __future__ import annotations

from respan_gateway.database import Migration

TABLE = "request_logs_metadata"


def _pairs(dialect: str, metadata: str) -> str:
    """(key, value) of the top-level entries of ``metadata`` whose value is not null, as ``e``."""
    if dialect == "postgres":
        return (f"jsonb_each_text(CASE WHEN jsonb_typeof({metadata}) = 'object' THEN {metadata} END) AS e "
                "WHERE e.value IS NOT NULL")
    # json_each of invalid JSON is an error (the insert would fail): such metadata has no entries.
    return (f"json_each(CASE WHEN json_valid({metadata}) AND json_type({metadata}) = 'object' "
            f"THEN {metadata} ELSE '{{}}' END) AS e WHERE e.type <> 'null'")


def _value(dialect: str) -> str:
    """An entry's value as the text the filter compares."""
    return "e.value" if dialect == "postgres" else "CAST(e.value AS TEXT)"


def _insert(dialect: str) -> str:
    value = _value(dialect)
    return (f"INSERT INTO {TABLE} (tenant, key, value, unique_id) SELECT NEW.tenant, e.key, {value}, NEW.unique_id "
            f"FROM {_pairs(dialect, 'NEW.metadata')} ON CONFLICT DO NOTHING")


def _statements(dialect: str) -> list[str]:
    clustered = "" if dialect == "postgres" else " WITHOUT ROWID"
    table = (f"CREATE TABLE IF NOT EXISTS {TABLE} (tenant TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, "
             f"unique_id TEXT NOT NULL, PRIMARY KEY (tenant, key, value, unique_id)){clustered}")
    value = _value(dialect)
    backfill = (f"INSERT INTO {TABLE} (tenant, key, value, unique_id) SELECT r.tenant, e.key, {value}, r.unique_id "
                f"FROM request_logs r, {_pairs(dialect, 'r.metadata')} AND r.metadata IS NOT NULL "
                "ON CONFLICT DO NOTHING")
    # A record's rows are those of its old metadata: found by primary key, no second index to keep.
    delete = (f"DELETE FROM {TABLE} WHERE (tenant, key, value, unique_id) IN "
              f"(SELECT OLD.tenant, e.key, {value}, OLD.unique_id FROM {_pairs(dialect, 'OLD.metadata')})")
    if dialect == "sqlite":
        return [table, backfill,
                f"CREATE TRIGGER IF NOT EXISTS {TABLE}_insert AFTER INSERT ON request_logs "
                f"WHEN NEW.metadata IS NOT NULL BEGIN {_insert(dialect)}; END",
                f"CREATE TRIGGER IF NOT EXISTS {TABLE}_update AFTER UPDATE OF metadata ON request_logs "
                f"BEGIN {delete}; {_insert(dialect)}; END"]
    return [
        "LOCK TABLE request_logs IN SHARE MODE",  # no record is written between the backfill and the triggers
        table, backfill,
        f"CREATE OR REPLACE FUNCTION {TABLE}_keep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF TG_OP = 'UPDATE' THEN {delete}; END IF; "
        f"IF NEW.metadata IS NOT NULL THEN {_insert(dialect)}; END IF; RETURN NULL; END $$",
        f"CREATE TRIGGER {TABLE}_insert AFTER INSERT ON request_logs FOR EACH ROW EXECUTE FUNCTION {TABLE}_keep()",
        f"CREATE TRIGGER {TABLE}_update AFTER UPDATE OF metadata ON request_logs FOR EACH ROW "
        f"EXECUTE FUNCTION {TABLE}_keep()",
        # The planner's statistics now, not at autovacuum's next pass: without them it walks the index
        # for a page of a common value (2.4 s over 1M records instead of 40 ms).
        f"ANALYZE {TABLE}",
    ]


def migration(version: int) -> Migration:
    return Migration(version, sqlite=_statements("sqlite"), postgres=_statements("postgres"))


#: Up to this many matches, a page fetches them from the index and sorts them; beyond, it walks the
#: records in order and probes the index for each (a page is then a few rows away).
FEW = 5000


def clause(key_param: str, value_params: list[str], *, probe: bool, table: str) -> str:
    """The filter ``metadata.<key> IN (values)`` on the index; ``$1`` is the tenant. ``probe``: one
    index lookup per record of ``table`` (correlated), else the index's records (a semi-join)."""
    match = f"tenant = $1 AND key = {key_param} AND value IN ({', '.join(value_params)})"
    if probe:
        return f"EXISTS (SELECT 1 FROM {TABLE} m WHERE m.{match.replace(' AND ', ' AND m.')} AND m.unique_id = {table}.unique_id)"
    return f"unique_id IN (SELECT unique_id FROM {TABLE} WHERE {match})"


def count(values: int) -> str:
    """The records of a tenant (``$1``) whose metadata ``$2`` is one of ``values`` values ($3...)."""
    params = ", ".join(f"${i + 3}" for i in range(values))
    return f"SELECT COUNT(*) FROM {TABLE} WHERE tenant = $1 AND key = $2 AND value IN ({params})"
