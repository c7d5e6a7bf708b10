"""Customers: upserted from the calls' params (no write when nothing changed), and the users API, on
SQLite and PostgreSQL."""

from __future__ import annotations

import time

import httpx2
import openai
import pytest

from respan_gateway.testing import TEST_KEY, GatewayServer

HI = [{"role": "user", "content": "hi"}]
AUTH = {"authorization": f"Bearer {TEST_KEY}"}
REAL = 11e-6  # what one "hi" call costs at gpt-test's prices (1 prompt + 5 completion tokens)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return ""
    schema = f"{request.getfixturevalue('postgres_schema')}_users_{time.monotonic_ns() % 10**9}"
    return f'\n[database]\nurl = "postgresql://postgres@127.0.0.1:5432/test"\nschema = "{schema}"\n'


def user(gw: GatewayServer, identifier: str) -> httpx2.Response:
    return httpx2.get(gw.base_url + f"users/{identifier}/", headers=AUTH, timeout=10)


def call(gw: GatewayServer, **extra) -> None:  # noqa: ANN003
    limits = dict(gw.gateway.middlewares)["limits"]
    before = limits.observed
    gw.openai().chat.completions.create(model="gpt-test", messages=HI, max_tokens=10, extra_body=extra)
    deadline = time.monotonic() + 5
    while limits.observed <= before and time.monotonic() < deadline:
        time.sleep(0.01)


def test_customer_params_upsert_the_customer_without_a_write_when_nothing_changed(gateway_factory, database) -> None:
    gw = gateway_factory(database)
    params = {"customer_identifier": "cust-upsert", "name": "Ada", "email": "ada@example.com",
              "period_budget": 5.0, "budget_duration": "weekly", "markup_percentage": 10, "rate_limit": 100}
    call(gw, customer_params=params)
    first = user(gw, "cust-upsert").json()
    assert {k: first[k] for k in ("customer_identifier", "name", "email", "period_budget", "budget_duration",
                                  "markup_percentage", "rate_limit")} == {
        "customer_identifier": "cust-upsert", "name": "Ada", "email": "ada@example.com", "period_budget": 5.0,
        "budget_duration": "weekly", "markup_percentage": 10, "rate_limit": 100}
    assert first["total_requests"] == 1 and first["total_usage"] == pytest.approx(REAL * 1.1)
    # The same params again: the row is not written (its updated_at stays); the usage totals grow.
    time.sleep(0.01)
    call(gw, customer_params=params)
    call(gw, customer_identifier="cust-upsert")  # the identifier alone: the stored budgets apply
    second = user(gw, "cust-upsert").json()
    assert second["updated_at"] == first["updated_at"]
    assert second["total_requests"] == 3
    assert second["total_usage"] == pytest.approx(3 * REAL * 1.1)
    # A changed field is written; the top-level customer_email wins over customer_params.email.
    call(gw, customer_params={**params, "total_budget": 9.0}, customer_email="ada@new.example.com")
    third = user(gw, "cust-upsert").json()
    assert third["total_budget"] == 9.0 and third["email"] == "ada@new.example.com" and third["period_budget"] == 5.0
    assert third["updated_at"] >= second["updated_at"]


def test_a_long_identifier_is_cut_at_254_characters(gateway_factory) -> None:
    gw = gateway_factory()
    long = "c" * 300
    call(gw, customer_identifier=long)
    record = user(gw, long).json()  # the API cuts the same way
    assert record["customer_identifier"] == "c" * 254


def test_the_users_api_get_patch_delete_and_list(gateway_factory, database) -> None:
    gw = gateway_factory(database)
    assert user(gw, "nobody").status_code == 404
    # PATCH creates a customer and sets its budgets before its first call.
    r = httpx2.patch(gw.base_url + "users/cust-api/", headers=AUTH,
                     json={"name": "Bob", "period_budget": 0.00003, "budget_duration": "monthly", "rate_limit": 10})
    assert r.status_code == 200, r.text
    assert r.json()["period_budget"] == 0.00003 and r.json()["total_period_usage"] == 0.0
    assert r.json()["period_start"].endswith("T00:00:00Z")
    call(gw, customer_identifier="cust-api")
    got = user(gw, "cust-api").json()
    assert got["name"] == "Bob" and got["total_requests"] == 1
    assert got["total_period_usage"] == pytest.approx(REAL)
    # The budget set through the API blocks the next call (its estimate no longer fits).
    with pytest.raises(openai.RateLimitError):
        gw.openai().chat.completions.create(model="gpt-test", messages=HI, max_tokens=10,
                                            extra_body={"customer_identifier": "cust-api"})
    # null clears a field; the budget is gone and the call goes through.
    r = httpx2.patch(gw.base_url + "users/cust-api/", headers=AUTH, json={"period_budget": None})
    assert r.json()["period_budget"] is None and r.json()["budget_duration"] == "monthly"
    call(gw, customer_identifier="cust-api")
    # Bad input is a 400 naming the field.
    r = httpx2.patch(gw.base_url + "users/cust-api/", headers=AUTH, json={"rate_limit": "many"})
    assert r.status_code == 400 and "rate_limit" in r.json()["error"]["message"]
    r = httpx2.patch(gw.base_url + "users/cust-api/", headers=AUTH, json={"period_start": "next tuesday"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "period_start"
    r = httpx2.patch(gw.base_url + "users/cust-api/", headers=AUTH, json={"colour": "blue"})
    assert r.status_code == 400 and "colour" in r.json()["error"]["message"]
    # List, with usage totals, sorted and paged.
    call(gw, customer_identifier="cust-b")
    call(gw, customer_identifier="cust-b")
    r = httpx2.post(gw.base_url + "users/list/", headers=AUTH, json={"sort_by": "-total_requests", "page_size": 1})
    assert r.status_code == 200
    listing = r.json()
    assert listing["count"] == 2 and listing["next"] and listing["previous"] is None
    (top,) = listing["results"]
    assert top["customer_identifier"] in ("cust-api", "cust-b") and top["number_of_requests"] == 2
    r = httpx2.get(gw.base_url + "users/list/?sort_by=customer_identifier", headers=AUTH)
    assert [u["customer_identifier"] for u in r.json()["results"]] == ["cust-api", "cust-b"]
    assert httpx2.get(gw.base_url + "users/list/?sort_by=password", headers=AUTH).status_code == 400
    # Delete: gone, and its totals with it.
    assert httpx2.delete(gw.base_url + "users/cust-b/", headers=AUTH).status_code == 204
    assert user(gw, "cust-b").status_code == 404
    assert httpx2.delete(gw.base_url + "users/cust-b/", headers=AUTH).status_code == 404
    # Another tenant sees none of them; no key at all is a 401.
    assert httpx2.get(gw.base_url + "users/list/").status_code == 401


def test_customers_are_per_tenant(gateway_factory) -> None:
    gw = gateway_factory(keys='{ key = "sk-respan-other-tenant", tenant = "globex", name = "other" }')
    call(gw, customer_identifier="shared-name")
    other = {"authorization": "Bearer sk-respan-other-tenant"}
    assert httpx2.get(gw.base_url + "users/shared-name/", headers=other).status_code == 404
    assert httpx2.get(gw.base_url + "users/list/", headers=other).json()["count"] == 0


def test_the_customer_reader_service_is_provided(gateway_factory) -> None:
    from respan_gateway.hookspecs import CustomerReader

    gw = gateway_factory()
    call(gw, customer_identifier="cust-service", customer_name="Eve")
    reader = gw.gateway.service(CustomerReader)
    assert isinstance(reader, CustomerReader)
    record = gw.call(reader.get("acme", "cust-service"))
    assert record["name"] == "Eve" and record["total_requests"] == 1
    count, records = gw.call(reader.list("acme"))
    assert count == 1 and records[0]["customer_identifier"] == "cust-service"
