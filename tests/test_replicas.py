"""Replicas behind a load balancer, as deploy/compose.yaml runs them: two `respan-gateway serve`
processes with two workers each, one PostgreSQL, one Redis, nginx (Debian's package) in front.

What an operator relies on: every request gets one log record in the shared database, whichever
replica and worker served it; the logs API of either replica sees all of them; a replica stopped
mid-load (SIGTERM, as Kubernetes and compose stop a container) loses no request the load balancer
can retry and no log record; a cached answer made by one replica is a hit on the other; a customer's
budget holds across both (the limits plugin's own two-process test measures the overshoot bound).
"""

from __future__ import annotations

import datetime as dt

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from respan_gateway.testing import TEST_KEY, GatewayProcess, test_config
from respan_gateway.testing.pytest_plugin import PG_URL

pytestmark = pytest.mark.shared

HEADERS = {"authorization": f"Bearer {TEST_KEY}"}
MESSAGES = [{"role": "user", "content": "hello replicas"}]


NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """nginx as the load balancer, configured as deploy/nginx.conf: round robin over the replicas, a
    request the replica never read (connection refused or reset before any answer) sent to the next."""

    def __init__(self, folder: Path, upstreams: list[str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = folder
        servers = "\n".join(f"    server {u} max_fails=1 fail_timeout=30s;" for u in upstreams)
        user = "user root;" if os.geteuid() == 0 else ""
        (folder / "nginx.conf").write_text(f"""
{user}
daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {folder}/body;
  proxy_temp_path {folder}/proxy;
  fastcgi_temp_path {folder}/fastcgi;
  uwsgi_temp_path {folder}/uwsgi;
  scgi_temp_path {folder}/scgi;
  upstream gateway {{
{servers}
  }}
  server {{
    listen 127.0.0.1:{self.port};
    location / {{
      proxy_pass http://gateway;
      proxy_http_version 1.1;
      proxy_buffering off;
      proxy_read_timeout 60s;
      proxy_next_upstream error non_idempotent;
      proxy_next_upstream_tries 2;
    }}
  }}
}}
""")
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Nginx:
        self.process = subprocess.Popen([NGINX, "-p", str(self.folder), "-c", str(self.folder / "nginx.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                httpx2.get(self.url + "/healthz", timeout=1)
                return self
            except httpx2.TransportError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"nginx exited: {self.process.stderr.read().decode()}")  # type: ignore[union-attr]
                time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful shutdown
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture(scope="module")
def _replicas(_session_upstream, postgres_schema, module_redis_state, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """One stack for the module (its tests keep apart by run id, customer, cache key): starting two
    2-worker replicas is most of what these tests cost."""
    if NGINX is None:
        message = "nginx is not installed (Debian package `nginx`; .ci/run installs it): the replica tests are SKIPPED"
        import warnings

        warnings.warn(message)
        pytest.skip(message)
    tmp_path = tmp_path_factory.mktemp("replicas")
    schema = f"{postgres_schema}_replicas_{uuid.uuid4().hex[:6]}"
    config = tmp_path / "gateway.toml"
    config.write_text(test_config(
        _session_upstream.url,
        f'[database]\nurl = "{PG_URL}"\nschema = "{schema}"\n'
        f'[logging]\nspill_dir = "{tmp_path}/spill"\nflush_interval = 0.05\n' + module_redis_state))
    replicas = [GatewayProcess(str(config), workers=2) for _ in range(2)]
    try:
        for replica in replicas:
            replica.start()
        with Nginx(tmp_path, [f"127.0.0.1:{r.port}" for r in replicas]) as lb:
            yield {"lb": lb, "replicas": replicas, "schema": schema}
    finally:
        for replica in replicas:
            replica.stop()


@pytest.fixture
def stack(_replicas, fake_upstream) -> dict[str, Any]:
    """The module's stack, with a replica that an earlier test stopped started again (same port)."""
    for replica in _replicas["replicas"]:
        if replica.process.poll() is not None:
            replica.stop()
            replica.start()
    return _replicas


def _request(base: str, run: str, i: int) -> str:
    """One chat completion through the load balancer, streamed for odd i; returns its log id."""
    body = {"model": "gpt-test", "messages": MESSAGES, "metadata": {"run": run, "i": str(i)}, "customer_identifier": run}
    if i % 2:
        with httpx2.stream("POST", base + "/api/chat/completions", json={**body, "stream": True}, headers=HEADERS,
                           timeout=30) as r:
            assert r.status_code == 200, r.read()
            text = "".join(r.iter_text())
            assert text.endswith("data: [DONE]\n\n"), text[-200:]
            return r.headers["x-respan-log-id"]
    r = httpx2.post(base + "/api/chat/completions", json=body, headers=HEADERS, timeout=30)
    assert r.status_code == 200, r.text
    return r.headers["x-respan-log-id"]


def _load(base: str, run: str, count: int, threads: int = 8, during: Any = None) -> tuple[list[str], list[str]]:
    """``count`` requests from ``threads`` threads; ``during()`` runs once a third of them are done."""
    ids: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    next_i = iter(range(count))
    done = threading.Event()

    def worker() -> None:
        while True:
            with lock:
                i = next(next_i, None)
            if i is None:
                return
            try:
                log_id = _request(base, run, i)
            except Exception as exc:  # noqa: BLE001 - every failure is reported by the test
                with lock:
                    errors.append(f"{i}: {type(exc).__name__}: {exc}")
                continue
            with lock:
                ids.append(log_id)
                if len(ids) >= count // 3:
                    done.set()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    if during is not None:
        done.wait(60)
        during()
    for t in pool:
        t.join(120)
    return ids, errors


def _records(url: str, run: str, expected: int, timeout: float = 20) -> list[dict[str, Any]]:
    """The log records of this run, through the logs API of the replica at ``url`` (all pages)."""
    deadline = time.monotonic() + timeout
    while True:
        records: list[dict[str, Any]] = []
        page = 1
        while True:
            r = httpx2.post(f"{url}/api/request-logs/list/", params={"page": page, "page_size": 1000}, headers=HEADERS,
                            json={"filters": {"metadata__run": {"operator": "", "value": run}}}, timeout=10)
            assert r.status_code == 200, r.text
            body = r.json()
            records += body["results"]
            if not body.get("next"):
                break
            page += 1
        if len(records) >= expected or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def test_every_request_is_logged_once_and_seen_from_either_replica(stack) -> None:
    lb, replicas = stack["lb"], stack["replicas"]
    run = uuid.uuid4().hex
    hour = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0).isoformat()
    ids, errors = _load(lb.url, run, 120)
    assert errors == []
    assert len(set(ids)) == 120
    for replica in replicas:
        records = _records(replica.url, run, 120)
        assert sorted(r["unique_id"] for r in records) == sorted(ids)  # each exactly once
        # The count from a whole hour on one customer is the roll-up's, which four writers kept at once.
        r = httpx2.post(f"{replica.url}/api/request-logs/list/", params={"start_time": hour, "page_size": 1},
                        headers=HEADERS, json={"filters": {"customer_identifier": {"operator": "", "value": run}}})
        assert r.status_code == 200, r.text
        assert r.json()["count"] == 120, r.json()


def test_a_hit_cached_by_one_replica_is_served_by_the_other(stack, fake_upstream) -> None:
    first, second = stack["replicas"]
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": f"cache me {uuid.uuid4().hex}"}],
            "cache_enabled": True}
    answers = []
    for replica in (first, second, second, first):
        r = httpx2.post(replica.url + "/api/chat/completions", json=body, headers=HEADERS, timeout=30)
        assert r.status_code == 200, r.text
        answers.append((r.headers["x-respan-cache"], r.json()["choices"][0]["message"]["content"]))
    assert [a[0] for a in answers] == ["MISS", "HIT", "HIT", "HIT"]
    assert len({a[1] for a in answers}) == 1
    asked = [r for r in fake_upstream.requests if r.path.endswith("/chat/completions")
             and r.json["messages"] == body["messages"]]
    assert len(asked) == 1


def test_a_customer_budget_holds_across_both_replicas(stack) -> None:
    lb, replicas = stack["lb"], stack["replicas"]
    customer = f"customer-{uuid.uuid4().hex[:8]}"
    # gpt-test costs $1 / $2 per 1M tokens: a budget of a few requests' cost.
    body = {"model": "gpt-test", "messages": MESSAGES, "max_tokens": 20, "customer_identifier": customer,
            "customer_params": {"total_budget": 0.0002}}
    statuses = []
    for _ in range(40):
        r = httpx2.post(lb.url + "/api/chat/completions", json=body, headers=HEADERS, timeout=30)
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "budget_exceeded"
    assert 200 in statuses and 429 in statuses, statuses
    assert statuses.index(429) == statuses.count(200)  # once refused, always refused
    # Both replicas read the same settled spend, within the budget plus the one call in flight at a time.
    deadline = time.monotonic() + 60
    while True:
        totals = []
        for replica in replicas:
            r = httpx2.get(f"{replica.url}/api/users/{customer}/", headers=HEADERS, timeout=10)
            assert r.status_code == 200, r.text
            totals.append(r.json())
        settled = totals[0]["total_requests"] == statuses.count(200)
        if (settled and totals[0] == totals[1]) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert totals[0] == totals[1] and settled, totals
    per_call = totals[0]["total_usage"] / totals[0]["total_requests"]
    assert per_call > 0
    assert totals[0]["total_usage"] <= 0.0002 + per_call * 1.01


def test_a_replica_stopped_mid_load_loses_no_request_and_no_record(stack) -> None:
    """Last in the module: it stops a replica (the `stack` fixture would start it again)."""
    lb, (first, second) = stack["lb"], stack["replicas"]
    run = uuid.uuid4().hex
    codes: list[int] = []
    ids, errors = _load(lb.url, run, 150, during=lambda: codes.append(first.terminate(timeout=60, group=True)))
    assert codes == [0], first.output[-3000:]
    assert errors == [], errors[:5]
    assert len(set(ids)) == 150
    records = _records(second.url, run, 150)
    assert sorted(r["unique_id"] for r in records) == sorted(ids)
