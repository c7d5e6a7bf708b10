"""Limits across replicas: two `respan-gateway serve` processes with two workers each on one Redis and one
PostgreSQL; and what happens when Redis goes away and comes back."""

from __future__ import annotations

import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import pytest

from respan_gateway.testing import TEST_KEY, FakeUpstream, GatewayProcess, test_config

HI = [{"role": "user", "content": "hi"}]
AUTH = {"authorization": f"Bearer {TEST_KEY}"}
REAL = 11e-6  # one call's real cost at gpt-test's prices (1 prompt + 5 completion tokens)
ESTIMATE = 9e-6  # its estimate with default_max_tokens = 1: 7 prompt + 1 completion tokens, under the real cost
CONCURRENCY = 50


@pytest.mark.shared
def test_two_processes_with_two_workers_each_never_overshoot_a_budget_by_more_than_the_in_flight_calls(
        tmp_path: Path, fake_upstream: FakeUpstream, redis_state, postgres_schema: str) -> None:
    budget = 0.0002  # about 18 calls of the 200
    config = tmp_path / "gateway.toml"
    config.write_text(test_config(fake_upstream.url, redis_state + f"""
[database]
url = "postgresql://postgres@127.0.0.1:5432/test"
schema = "{postgres_schema}_race"

[limits]
# Estimates under the real cost (no max_tokens, 1 completion token assumed): the case that can overshoot.
default_max_tokens = 1
flush_interval = 0.2
"""))
    customer = {"customer_identifier": "cust-race", "total_budget": budget}
    with GatewayProcess(str(config), workers=2) as first, GatewayProcess(str(config), workers=2) as second:
        urls = [first.base_url, second.base_url]

        def one(i: int) -> int:
            r = httpx2.post(urls[i % 2] + "chat/completions", headers=AUTH, timeout=60,
                            json={"model": "gpt-test", "messages": HI, "customer_params": customer})
            assert r.status_code in (200, 429), r.text
            return r.status_code

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            statuses = list(pool.map(one, range(200)))
        allowed = statuses.count(200)
        settled = allowed * REAL

        def counters() -> tuple[float, dict]:
            with redis_state.client() as r:
                (key,) = [k for k in r.scan_iter(match=redis_state.prefix + "limits:*cust-race*")]
                counted = float(r.get(key))
            return counted, httpx2.get(first.base_url + "users/cust-race/", headers=AUTH, timeout=10).json()

        # The last settlements (one Redis round trip after each answer) and usage writes may still be
        # on their way: wait for them (a generous deadline, not a fixed sleep).
        deadline = time.monotonic() + 60
        while True:
            counted, totals = counters()
            done = totals["total_requests"] == allowed and totals["total_usage"] == pytest.approx(settled, rel=1e-6)
            if (done and counted == pytest.approx(settled, rel=1e-6)) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    overshoot = max(0.0, settled - budget)
    print(f"\ntwo processes x two workers, 200 calls, {CONCURRENCY} at once, budget ${budget:.6f}: {allowed} allowed, "
          f"{statuses.count(429)} refused; settled ${settled:.6f} (Redis counter ${counted:.6f}); overshoot "
          f"${overshoot:.6f} = {overshoot / REAL:.1f} calls, bound {CONCURRENCY} calls in flight (${CONCURRENCY * REAL:.6f})")
    assert 0 < allowed < 200 and statuses.count(429) == 200 - allowed
    assert counted == pytest.approx(settled, rel=1e-6)  # every allowed call settled at its real cost, in every worker
    assert overshoot <= CONCURRENCY * (REAL - ESTIMATE) + 1e-12  # what the in-flight calls cost beyond their estimate
    assert totals["total_requests"] == allowed and totals["total_usage"] == pytest.approx(settled, rel=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnRedis:
    """A redis-server of this test's own (never the shared one on 6379), stopped and started at will."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no",
                                         "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def own_redis():  # noqa: ANN201
    redis = OwnRedis()
    redis.start()
    yield redis
    redis.stop()


def _chat(base_url: str, **params) -> httpx2.Response:  # noqa: ANN003
    return httpx2.post(base_url + "chat/completions", headers=AUTH, timeout=10,
                       json={"model": "gpt-test", "messages": HI, "max_tokens": 10, **params})


@pytest.mark.shared
def test_when_redis_stops_budgets_fail_closed_with_503_and_come_back_with_it(gateway_factory, own_redis: OwnRedis) -> None:
    state = f'\n[state]\nredis_url = "redis://127.0.0.1:{own_redis.port}/0"\ncommand_timeout = 0.5\nconnect_timeout = 0.5\n'
    closed = gateway_factory(state)
    opened = gateway_factory(state + '\n[limits]\non_redis_unavailable = "open"\n')
    budget = {"customer_params": {"customer_identifier": "cust-redis", "total_budget": 1.0}}
    assert _chat(closed.base_url, **budget).status_code == 200
    own_redis.stop()
    refused = _chat(closed.base_url, **budget)
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert error["code"] == "limits_unavailable" and "Redis" in error["message"]
    assert refused.headers["retry-after"] == "1"
    record = closed.record(refused.headers["x-respan-log-id"])
    assert record["status_code"] == 503
    # A call without limits needs no Redis; the "open" gateway lets limited calls through, unchecked, and says so.
    assert _chat(closed.base_url).status_code == 200
    unchecked = _chat(opened.base_url, **budget)
    assert unchecked.status_code == 200
    assert opened.record(unchecked.headers["x-respan-log-id"])["limit_info"]["unchecked"]
    metrics = httpx2.get(closed.url + "/metrics").text
    assert 'respan_gateway_limit_checks_total{result="unavailable_refused"} 1' in metrics
    own_redis.start()  # an empty Redis: the lifetime counter is seeded again from the database
    deadline = time.monotonic() + 10
    while (status := _chat(closed.base_url, **budget).status_code) != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status == 200
