"""`respan-gateway serve` operated as in production: one /metrics for every worker, `--workers auto`,
config reload on SIGHUP (a good file and a bad one), on every ASGI server.

The CLI runs as a user runs it (a subprocess on a real socket, its workers spawned or forked by the
server); the openai SDK and httpx2 drive it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time
from pathlib import Path

import httpx2
import openai
import pytest

from respan_gateway.cli import available_cores
from respan_gateway.testing import TEST_KEY, FakeUpstream, GatewayProcess, test_config

MESSAGES = [{"role": "user", "content": "hi"}]
SERVERS = ["hypercorn", "uvicorn", "granian"]
OK = '{endpoint="chat",model="gpt-test",provider="fake",status_code="200"}'


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest) -> str:
    if importlib.util.find_spec(request.param) is None:
        pytest.skip(f"{request.param} is not installed (pip install 'respan-gateway[servers]')")
    return request.param


def start(tmp_path: Path, upstream: FakeUpstream, server: str, *, workers: int = 2, extra: str = "") -> GatewayProcess:
    path = tmp_path / "gateway.toml"
    path.write_text(test_config(upstream.url, f'[database]\nurl = "sqlite:///{tmp_path}/respan.sqlite3"\n'
                                              f'[logging]\nspill_dir = "{tmp_path}/spill"\nflush_interval = 0.05\n{extra}'))
    # TMPDIR: where `serve` makes the multiprocess folder of the metrics, so the test can see it.
    (tmp_path / "tmp").mkdir()
    gateway = GatewayProcess(str(path), workers=workers, env={"TMPDIR": str(tmp_path / "tmp")})
    gateway.command += ["--server", server]
    return gateway.start()


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def fresh_get(url: str) -> httpx2.Response:
    """A request on a new connection: the kernel hands it to whichever worker accepts first."""
    with httpx2.Client(timeout=10) as client:
        return client.get(url, headers={"connection": "close"})


def test_metrics_of_any_worker_count_the_requests_of_all(tmp_path: Path, fake_upstream: FakeUpstream, server: str) -> None:
    gateway = start(tmp_path, fake_upstream, server, extra="[metrics]\nflush_interval = 0.05\n")
    try:
        workers = set(gateway.worker_pids())
        assert len(workers) == 2
        folder = next((tmp_path / "tmp").glob("respan-metrics-*"))
        sent = 0
        # New connections until both workers have answered some (each writes its counters to its own
        # file of the multiprocess folder), at most 200.
        while sent < 200:
            with httpx2.Client(timeout=10) as client:
                r = client.post(gateway.base_url + "chat/completions", json={"model": "gpt-test", "messages": MESSAGES},
                                headers={"authorization": f"Bearer {TEST_KEY}", "connection": "close"})
            assert r.status_code == 200
            sent += 1
            served = {int(f.stem.split("_")[1]) for f in folder.glob("counter_*.db")}
            if sent >= 10 and served == workers:
                break
        assert served == workers, f"one worker answered all {sent} requests"
        # Every scrape, whichever worker answers it, counts every request (the others' flushed values).
        deadline = time.monotonic() + 10
        totals: list[float] = []
        while time.monotonic() < deadline:
            totals = [sample(fresh_get(gateway.url + "/metrics").text, "respan_gateway_requests_total" + OK) for _ in range(6)]
            if totals == [sent] * 6:
                break
            time.sleep(0.1)
        assert totals == [sent] * 6
        text = fresh_get(gateway.url + "/metrics").text
        assert sample(text, 'respan_gateway_request_duration_seconds_count{model="gpt-test",provider="fake"}') == sent
        assert sample(text, "respan_gateway_requests_in_flight") == 0  # summed over the live workers; a scrape is no call
        assert re.search(r"respan_gateway_log_records_written_total\{pid=\"\d+\"\} ", text), text  # liveall: per worker
    finally:
        gateway.stop()
    assert not folder.exists(), "the multiprocess folder outlived the server"
