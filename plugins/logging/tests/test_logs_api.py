"""The logs list API: filters and operators, metadata__<key>, paging, sorting and the summary.

Six requests with known models, customers, metadata and costs are made through the SDK; each query's
answer is compared with the set of those records it must return. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import httpx2
import pytest

from logs_client import Logs

MESSAGES = [{"role": "user", "content": "Say hello"}]  # 2 prompt tokens at the fake


@pytest.fixture
def seeded(logged_gateway) -> tuple[Logs, dict[str, str]]:
    gw = logged_gateway()
    client = gw.openai()
    ids: dict[str, str] = {}
    plan = [
        ("a", "gpt-test", "alice", {"env": "prod", "tier": "gold"}, "chunks-1"),
        ("b", "gpt-test", "bob", {"env": "prod", "tier": "silver"}, "chunks-3"),
        ("c", "gpt-test", "Carol", {"env": "staging"}, "chunks-5"),
        ("d", "fake/other-model", "alice", {"env": "staging", "tier": "gold"}, "chunks-7"),
        ("e", "fake/other-model", None, {}, "chunks-9"),
    ]
    for name, model, customer, metadata, scenario in plan:
        body = {"metadata": metadata, "extra_headers": {"x-fake-scenario": scenario}}
        if customer:
            body["customer_identifier"] = customer
        raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES, extra_body=body)
        ids[name] = raw.headers["x-respan-log-id"]
    with pytest.raises(Exception):
        client.chat.completions.create(model="fake/fake-error-400", messages=MESSAGES, extra_body={"customer_identifier": "dave"})
    logs = Logs(gw.url)
    ids["f"] = logs.list({"customer_identifier": {"operator": "", "value": ["dave"]}})["results"][0]["unique_id"]
    return logs, ids


def names(page: dict, ids: dict[str, str]) -> set[str]:
    by_id = {v: k for k, v in ids.items()}
    return {by_id[r["unique_id"]] for r in page["results"]}


CASES = [
    ({"model": {"operator": "", "value": ["gpt-test"]}}, {"a", "b", "c"}),
    ({"customer_identifier": {"operator": "iexact", "value": ["CAROL"]}}, {"c"}),
    ({"completion_tokens": {"operator": "lt", "value": [3]}}, {"a", "f"}),
    ({"completion_tokens": {"operator": "lte", "value": [3]}}, {"a", "b", "f"}),
    ({"completion_tokens": {"operator": "gt", "value": [7]}}, {"e"}),
    ({"completion_tokens": {"operator": "gte", "value": [7]}}, {"d", "e"}),
    ({"model": {"operator": "contains", "value": ["other"]}}, {"d", "e"}),
    ({"customer_identifier": {"operator": "icontains", "value": ["AR"]}}, {"c"}),
    ({"customer_identifier": {"operator": "startswith", "value": ["al"]}}, {"a", "d"}),
    ({"customer_identifier": {"operator": "endswith", "value": ["ob"]}}, {"b"}),
    ({"customer_identifier": {"operator": "in", "value": ["bob", "dave"]}}, {"b", "f"}),
    ({"customer_identifier": {"operator": "isnull", "value": [True]}}, {"e"}),
    ({"customer_identifier": {"operator": "not", "value": ["alice"]}}, {"b", "c", "e", "f"}),
    ({"status_code": {"operator": "gte", "value": [400]}}, {"f"}),
    ({"metadata__env": {"operator": "", "value": ["prod"]}}, {"a", "b"}),
    ({"metadata__tier": {"operator": "isnull", "value": [False]}}, {"a", "b", "d"}),
    ({"metadata__tier": {"operator": "in", "value": ["gold", "bronze"]}}, {"a", "d"}),
    ({"model": {"operator": "", "value": ["gpt-test"]}, "metadata__env": {"value": ["prod"]}}, {"a", "b"}),
]


def test_list_filters_and_operators(seeded) -> None:
    logs, ids = seeded
    for filters, expected in CASES:
        assert names(logs.list(filters), ids) == expected, filters


def test_or_connector_url_quick_filters_and_unknown_fields(seeded) -> None:
    logs, ids = seeded
    either = {"customer_identifier": {"operator": "", "value": ["bob"]}, "metadata__env": {"value": ["staging"]}}
    assert names(logs.list(either, operator="OR"), ids) == {"b", "c", "d"}
    # ?field=value, ?field[operator]=..&field[value]=..; an unknown field is metadata (as Respan does).
    assert names(logs.list(customer_identifier="alice"), ids) == {"a", "d"}
    assert names(logs.list(**{"completion_tokens[operator]": "gte", "completion_tokens[value]": "7"}), ids) == {"d", "e"}
    assert names(logs.list(tier="silver"), ids) == {"b"}
    r = httpx2.post(f"{logs.url}/api/request-logs/list/", headers=logs.headers, timeout=10,
                    json={"filters": {"no_such_field": {"value": [1]}}})
    assert r.status_code == 400 and "metadata__" in r.json()["error"]["message"]
    r = httpx2.post(f"{logs.url}/api/request-logs/list/", headers=logs.headers, timeout=10,
                    json={"filters": {"model": {"operator": "regex", "value": ["x"]}}})
    assert r.status_code == 400 and "regex" in r.json()["error"]["message"]


def test_paging_and_sorting(seeded) -> None:
    logs, ids = seeded
    first = logs.list(sort_by="completion_tokens", page_size=2)
    assert first["count"] == 6 and len(first["results"]) == 2 and first["previous"] is None
    assert [r["completion_tokens"] for r in first["results"]] == [0, 1]
    assert "page=2" in first["next"]
    second = logs.list(sort_by="completion_tokens", page_size=2, page=2)
    assert [r["completion_tokens"] for r in second["results"]] == [3, 5] and second["previous"]
    last = logs.list(sort_by="completion_tokens", page_size=2, page=3)
    assert last["next"] is None and [r["completion_tokens"] for r in last["results"]] == [7, 9]
    newest = logs.list(sort_by="-id", page_size=1)["results"][0]
    assert newest["unique_id"] == ids["f"]
    assert [r["cost"] for r in logs.list(sort_by="-cost")["results"]] == sorted(
        (r["cost"] for r in logs.list()["results"]), reverse=True)
    r = httpx2.post(f"{logs.url}/api/request-logs/list/", params={"sort_by": "metadata"}, headers=logs.headers, timeout=10)
    assert r.status_code == 400


def test_time_window_and_summary(seeded) -> None:
    logs, ids = seeded
    assert logs.list(start_time="2000-01-01T00:00:00Z")["count"] == 6
    assert logs.list(end_time="2000-01-01T00:00:00Z")["count"] == 0
    total = logs.summary()
    assert total["number_of_requests"] == 6 and total["number_of_errors"] == 1
    # prompt 2 tokens each (5 answered); completion 1+3+5+7+9 = 25 at gpt-test prices for a, b, c only.
    assert total["total_prompt_tokens"] == 10 and total["total_completion_tokens"] == 25
    assert total["total_tokens"] == 35
    assert total["total_cost"] == pytest.approx((3 * 2 * 1.0 + (1 + 3 + 5) * 2.0) / 1e6)
    assert logs.summary({"metadata__env": {"value": ["prod"]}})["number_of_requests"] == 2


@pytest.mark.parametrize(("query", "param"), [
    ({"page": str(10**30)}, "page"), ({"page": "0"}, "page"), ({"page": "x"}, "page"),
    ({"page_size": "0"}, "page_size"), ({"page_size": str(10**30)}, "page_size"),
])
def test_page_out_of_bounds_is_a_400_naming_it(logged_gateway, query: dict[str, str], param: str) -> None:
    logs = Logs(logged_gateway().url)
    r = httpx2.post(f"{logs.url}/api/request-logs/list/", params=query, json={"filters": {}}, headers=logs.headers, timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and f"`{param}`" in r.json()["error"]["message"]


def test_the_last_page_allowed_is_empty_not_an_error(logged_gateway) -> None:
    logs = Logs(logged_gateway().url)
    assert logs.list(page=1_000_000_000, page_size=1000)["results"] == []
