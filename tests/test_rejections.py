"""Every request the gateway refuses early has its log record, in the logs API: a body too large (413),
a body that is not JSON (400), a bad key (401, under `[logging] unauthenticated_tenant`, without
content), a request shed by the admission limit (503); and `/readyz` reports Redis without failing on it."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import httpx2

from respan_gateway.testing import TEST_KEY, GatewayServer

MESSAGES = [{"role": "user", "content": "hi"}]
AUTH = {"authorization": f"Bearer {TEST_KEY}"}
OPS_KEY = "sk-ops-default-tenant-key"  # a key of the tenant "default", where unauthenticated requests are logged


def records(gw: GatewayServer, key: str, request_id: str, timeout: float = 60) -> list[dict[str, Any]]:
    """The records of one request (by its x-respan-gateway-request-id) that ``key``'s tenant sees."""
    deadline = time.monotonic() + timeout
    while True:
        r = httpx2.post(gw.url + "/api/request-logs/list/", headers={"authorization": f"Bearer {key}"},
                        json={"filters": {"gateway_request_id": {"operator": "", "value": request_id}}}, timeout=10)
        assert r.status_code == 200, r.text
        found = r.json()["results"]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def start(gateway_factory: Any, tmp_path: Any, server: str = "") -> GatewayServer:
    return gateway_factory(f'[database]\nurl = "sqlite:///{tmp_path}/r.sqlite3"\n[logging]\nspill_dir = "{tmp_path}/spill"\n'
                           f'flush_interval = 0.05\n[server]\nmax_body_bytes = 2000\n{server}',
                           keys=f'{{ key = "{OPS_KEY}", tenant = "default", name = "ops" }}')


def test_a_body_too_large_and_a_body_that_is_not_json_are_logged(gateway_factory, tmp_path) -> None:
    gw = start(gateway_factory, tmp_path)
    big = httpx2.post(gw.base_url + "chat/completions", headers=AUTH, timeout=10,
                      json={"model": "gpt-test", "messages": [{"role": "user", "content": "x" * 5000}]})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    record = gw.record(big.headers["x-respan-log-id"])
    assert record["status_code"] == 413 and "larger than 2000 bytes" in record["error_message"]

    bad = httpx2.post(gw.base_url + "chat/completions", headers={**AUTH, "content-type": "application/json"},
                      content=b"{not json", timeout=10)
    assert bad.status_code == 400
    record = gw.record(bad.headers["x-respan-log-id"])
    assert record["status_code"] == 400 and "not valid JSON" in record["error_message"]


def test_a_bad_key_is_logged_under_the_unauthenticated_tenant_without_content(gateway_factory, tmp_path) -> None:
    gw = start(gateway_factory, tmp_path)
    r = httpx2.post(gw.base_url + "chat/completions", headers={"authorization": "Bearer sk-not-a-key-42"},
                    json={"model": "gpt-test", "messages": [{"role": "user", "content": "secret plans"}]}, timeout=10)
    assert r.status_code == 401
    (record,) = records(gw, OPS_KEY, r.headers["x-respan-gateway-request-id"])
    assert record["status_code"] == 401 and record["key_id"] is None
    assert "secret plans" not in str(record) and "sk-not-a-key-42" not in str(record)
    # Not in the tenant of the key the caller did not have.
    assert records(gw, TEST_KEY, r.headers["x-respan-gateway-request-id"], timeout=0.2) == []


def test_a_request_shed_by_the_admission_limit_is_logged_under_its_tenant(gateway_factory, tmp_path) -> None:
    gw = start(gateway_factory, tmp_path, "max_in_flight = 1\n")
    stalled = {"model": "gpt-test", "messages": MESSAGES, "stream": True, "extra_headers": {"x-fake-scenario": "stall-after-1"}}
    with contextlib.ExitStack() as streams:
        r = streams.enter_context(httpx2.stream("POST", gw.base_url + "chat/completions", headers=AUTH, json=stalled, timeout=30))
        assert r.status_code == 200
        shed = httpx2.post(gw.base_url + "chat/completions", headers=AUTH, json={"model": "gpt-test", "messages": MESSAGES}, timeout=10)
        assert shed.status_code == 503
    (record,) = records(gw, TEST_KEY, shed.headers["x-respan-gateway-request-id"])
    assert record["status_code"] == 503 and "limit of 1 requests in flight" in record["error_message"]


def test_readyz_reports_redis_but_does_not_fail_on_it(gateway_factory, redis_state) -> None:
    gw = gateway_factory(redis_state)
    r = httpx2.get(gw.url + "/readyz", timeout=10)
    assert r.status_code == 200 and r.json()["checks"]["redis"] is True and "degraded" not in r.json()
    stores = r.json()["stores"]
    assert stores["request_logs"] is True and all(stores.values()), stores  # every declared store, each reachable

    # Redis shared by every replica is down: each still answers, so none leaves the load balancer.
    down = gateway_factory('[state]\nredis_url = "redis://127.0.0.1:1/0"\nconnect_timeout = 0.2\n')
    r = httpx2.get(down.url + "/readyz", timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["checks"]["redis"] is False and r.json()["degraded"] == ["redis"]
    assert r.json()["status"] == "ready"
