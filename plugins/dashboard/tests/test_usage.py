"""Usage aggregates on SQLite and PostgreSQL: the RequestLogReader service and the usage page agree
with the records the logs API lists (counts, tokens, cost, nearest-rank p50/p95 latency)."""

from __future__ import annotations

import math
import time

import httpx2
import pytest
from dashboard_kit import sign_in

from respan_gateway.hookspecs import LogQuery, RequestLogReader
from respan_gateway.testing import TEST_KEY


def _nearest_rank(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_usage_aggregates_match_the_listed_records(dashboard_gateway) -> None:
    server = dashboard_gateway()
    client = server.openai()
    plan = [("gpt-test", "alice")] * 4 + [("fake/other-model", "bob")] * 3 + [("gpt-test", "bob")] * 2
    for model, customer in plan:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello"}],
                                       extra_body={"customer_identifier": customer})
    try:
        client.chat.completions.create(model="fake/fake-error-400", messages=[{"role": "user", "content": "x"}])
    except Exception:  # noqa: BLE001
        pass
    listed = httpx2.get(f"{server.url}/api/request-logs/list/?page_size=100",
                        headers={"authorization": f"Bearer {TEST_KEY}"}).json()["results"]
    assert len(listed) == 10
    reader = server.gateway.service(RequestLogReader)
    rows = server.call(reader.usage("acme", LogQuery(), bucket="hour"))
    assert sum(r.requests for r in rows) == 10 and sum(r.errors for r in rows) == 1
    assert sum(r.total_tokens for r in rows) == sum(r["total_request_tokens"] or 0 for r in listed)
    assert math.isclose(sum(r.cost for r in rows), sum(r["cost"] or 0 for r in listed), rel_tol=1e-9)
    # From the records (a start not on a whole hour): exact nearest-rank percentiles; from the hourly
    # roll-up (no start, or a whole hour): the percentile's histogram bin, within 4.9%.
    raw = LogQuery(start_time=math.floor(time.time() / 3600) * 3600 - 3600.5)
    for query, tolerance in ((raw, 1e-9), (LogQuery(), 0.049)):
        by_model = {r.group: r for r in server.call(reader.usage("acme", query, bucket=None, group_by="model"))}
        assert {m: r.requests for m, r in by_model.items()} == {"gpt-test": 6, "fake/other-model": 3, "fake/fake-error-400": 1}
        for model, row in by_model.items():
            latencies = [r["latency"] for r in listed if r["model"] == model and r["latency"] is not None]
            for got, exact in ((row.p50_latency, _nearest_rank(latencies, 0.5)), (row.p95_latency, _nearest_rank(latencies, 0.95))):
                if tolerance > 1e-9 and exact < 0.001:  # the roll-up's bin below 1 ms reads 0.5 ms
                    assert got == 0.0005, (model, got, exact)
                else:
                    assert math.isclose(got, exact, rel_tol=tolerance), (model, got, exact)
    by_customer = {r.group: r.requests for r in server.call(
        reader.usage("acme", LogQuery(filters=[("model", "", "gpt-test")]), bucket="day", group_by="customer"))}
    assert by_customer == {"alice": 4, "bob": 2}  # the logs API's filters apply to the aggregates
    assert server.call(reader.usage("globex", LogQuery(), bucket="hour")) == []

    page = sign_in(server).get("/ui/usage?range=7d&bucket=day&group=customer")
    assert page.status_code == 200
    assert '<li><b>10</b> requests</li>' in page.text and '<li><b>1</b> errors</li>' in page.text
