"""A metadata filter (``metadata__<key>`` equal to values) reads the metadata index (meta_index.py) and
finds what the JSON expression finds, on SQLite and PostgreSQL: for records of real requests, after a
PATCH of their metadata, and after the migration indexed the records already stored.

The JSON expression is the same filter through another operator (``iexact``, lowercase values here).
"""

from __future__ import annotations

from typing import Any

import pytest

from logs_client import Logs

from respan_plugins.logging import meta_index

MESSAGES = [{"role": "user", "content": "Say hello"}]
PLAN = [{"env": "prod", "team": "t1"}, {"env": "prod", "team": "t2"}, {"env": "staging"}, {},
        {"env": "", "team": "t1", "n": 3}, None]
ASKED = [("env", ["prod"]), ("env", ["staging"]), ("env", [""]), ("team", ["t1"]), ("team", ["t1", "t2"]),
         ("n", ["3"]), ("env", ["nowhere"]), ("absent", ["x"])]


def _ids(logs: Logs, key: str, values: list[str], operator: str = "") -> set[str]:
    page = logs.list({f"metadata__{key}": {"operator": operator, "value": values}}, page_size=100)
    assert page["count"] == len(page["results"])  # all on one page: the count (from the index alone) is exact
    return {r["unique_id"] for r in page["results"]}


def _same_as_the_json(logs: Logs, monkeypatch: pytest.MonkeyPatch) -> dict[tuple[str, str], set[str]]:
    """The records each ASKED filter finds, the same through the index (both of a page's ways: the
    index's records when few match, a probe per record when many do) as through the JSON."""
    found = {}
    for key, values in ASKED:
        by_json = set().union(*(_ids(logs, key, [v], "iexact") for v in values))
        for few in (meta_index.FEW, 0):
            monkeypatch.setattr(meta_index, "FEW", few)
            assert _ids(logs, key, values) == by_json, (key, values, few)
            both = {f"metadata__{key}": {"value": values}, "model": {"value": ["gpt-test"]}}
            assert {r["unique_id"] for r in logs.list(both, page_size=100)["results"]} == by_json
        found[(key, ",".join(values))] = by_json
    return found


def test_a_metadata_filter_reads_the_index_and_finds_what_the_json_holds(logged_gateway, backend: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    gw = logged_gateway()
    client = gw.openai()
    ids = []
    for metadata in PLAN:
        body: dict[str, Any] = {"metadata": metadata} if metadata is not None else {}
        raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES, extra_body=body)
        ids.append(raw.headers["x-respan-log-id"])
    logs = Logs(gw.url)
    found = _same_as_the_json(logs, monkeypatch)
    assert found[("env", "prod")] == {ids[0], ids[1]} and found[("team", "t1,t2")] == {ids[0], ids[1], ids[4]}
    assert found[("env", "")] == {ids[4]} and found[("n", "3")] == {ids[4]} and not found[("absent", "x")]
    assert logs.summary({"metadata__env": {"value": ["prod"]}})["number_of_requests"] == 2

    # A PATCH merges metadata: the record leaves its old value's rows and joins the new one's.
    assert logs.patch(ids[0], {"metadata": {"env": "staging"}}).status_code == 200
    found = _same_as_the_json(logs, monkeypatch)
    assert found[("env", "prod")] == {ids[1]} and found[("env", "staging")] == {ids[0], ids[2]}
    assert found[("team", "t1")] == {ids[0], ids[4]}

    # The migration indexes the records already stored (the index emptied, then migration 22 again).
    db = gw.gateway.database
    pg = backend == "postgres"
    drops = [f"DROP TRIGGER {meta_index.TABLE}_insert" + (" ON request_logs" if pg else ""),
             f"DROP TRIGGER {meta_index.TABLE}_update" + (" ON request_logs" if pg else ""),
             f"DROP TABLE {meta_index.TABLE}"]
    for sql in drops:
        gw.call(db.execute(sql))
    migration = meta_index.migration(22)
    if pg:  # one transaction, as the migrator runs it (LOCK TABLE needs one)
        gw.call(db.execute(";\n".join(migration.postgres)))
    else:
        for sql in migration.sqlite:
            gw.call(db.execute(sql))
    assert _same_as_the_json(logs, monkeypatch) == found
    assert gw.call(db.fetchval(f"SELECT COUNT(*) FROM {meta_index.TABLE}")) == 8
