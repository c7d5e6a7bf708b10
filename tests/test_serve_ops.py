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
from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import pytest

from respan_gateway.cli import available_cores
from respan_gateway.testing import TEST_KEY, FakeUpstream, GatewayProcess, test_config

MESSAGES = [{"role": "user", "content": "hi"}]
SERVERS = ["hypercorn", "uvicorn", "granian"]
# The metrics test's own model: its counts are exact whatever else the module's gateway served.
OK = '{endpoint="chat",model="gpt-metrics",provider="fake",status_code="200"}'
METRICS_MODEL = '\n[models."gpt-metrics"]\nprovider = "fake"\nupstream_model = "gpt-metrics-upstream"\n'


@pytest.fixture(scope="module", params=SERVERS)
def server(request: pytest.FixtureRequest) -> str:
    if importlib.util.find_spec(request.param) is None:
        pytest.skip(f"{request.param} is not installed (pip install 'respan-gateway[servers]')")
    return request.param


@pytest.fixture(scope="module")
def two_workers(server: str, _session_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One 2-worker gateway per server for the module's tests (starting one is most of what they
    cost); once it has stopped, the multiprocess folder of its metrics must be gone."""
    tmp_path = tmp_path_factory.mktemp(f"serve-ops-{server}")
    path = tmp_path / "gateway.toml"
    path.write_text(test_config(_session_upstream.url, f'[database]\nurl = "sqlite:///{tmp_path}/respan.sqlite3"\n'
                                                       f'[logging]\nspill_dir = "{tmp_path}/spill"\nflush_interval = 0.05\n'
                                                       f'[metrics]\nflush_interval = 0.05\n{METRICS_MODEL}'))
    # TMPDIR: where `serve` makes the multiprocess folder of the metrics, so the test can see it.
    (tmp_path / "tmp").mkdir()
    gateway = GatewayProcess(str(path), workers=2, env={"TMPDIR": str(tmp_path / "tmp")})
    gateway.command += ["--server", server]
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()
    assert not list((tmp_path / "tmp").glob("respan-metrics-*")), f"{server}: the multiprocess folder outlived the server"


def metrics_folder(gateway: GatewayProcess) -> Path:
    return next(Path(gateway.env["TMPDIR"]).glob("respan-metrics-*"))


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def fresh_get(url: str) -> httpx2.Response:
    """A request on a new connection: the kernel hands it to whichever worker accepts first."""
    with httpx2.Client(timeout=10) as client:
        return client.get(url, headers={"connection": "close"})


def test_metrics_of_any_worker_count_the_requests_of_all(two_workers: GatewayProcess, fake_upstream: FakeUpstream) -> None:
    gateway = two_workers
    workers = set(gateway.worker_pids())
    assert len(workers) == 2
    folder = metrics_folder(gateway)
    sent = 0
    # New connections until both workers have answered some (each writes its counters to its own
    # file of the multiprocess folder), at most 200.
    while sent < 200:
        with httpx2.Client(timeout=10) as client:
            r = client.post(gateway.base_url + "chat/completions", json={"model": "gpt-metrics", "messages": MESSAGES},
                            headers={"authorization": f"Bearer {TEST_KEY}", "connection": "close"})
        assert r.status_code == 200
        sent += 1
        served = {int(f.stem.split("_")[1]) for f in folder.glob("counter_*.db")}
        if sent >= 10 and served == workers:
            break
    assert served == workers, f"one worker answered all {sent} requests"
    # Every scrape, whichever worker answers it, counts every request (the others' flushed values).
    deadline = time.monotonic() + 60
    totals: list[float] = []
    while time.monotonic() < deadline:
        totals = [sample(fresh_get(gateway.url + "/metrics").text, "respan_gateway_requests_total" + OK) for _ in range(6)]
        if totals == [sent] * 6:
            break
        time.sleep(0.1)
    assert totals == [sent] * 6
    text = fresh_get(gateway.url + "/metrics").text
    assert sample(text, 'respan_gateway_request_duration_seconds_count{model="gpt-metrics",provider="fake"}') == sent
    assert sample(text, "respan_gateway_requests_in_flight") == 0  # summed over the live workers; a scrape is no call
    assert re.search(r"respan_gateway_log_records_written_total\{pid=\"\d+\"\} ", text), text  # liveall: per worker
    # (The folder's removal when the server stops: the `two_workers` fixture checks it.)


def _answers(gateway: GatewayProcess, model: str, n: int = 6) -> list[int]:
    """The status of ``n`` requests for ``model``, each on a new connection (so both workers answer some)."""
    statuses = []
    for _ in range(n):
        with httpx2.Client(timeout=10) as client:
            statuses.append(client.post(gateway.base_url + "chat/completions", json={"model": model, "messages": MESSAGES},
                                        headers={"authorization": f"Bearer {TEST_KEY}", "connection": "close"}).status_code)
    return statuses


def _wait_for_lines(gateway: GatewayProcess, event: str, count: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(line) for line in gateway.log().splitlines() if line.startswith("{") and f'"{event}"' in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


NEW_MODEL = '\n[models."gpt-new"]\nprovider = "fake"\nupstream_model = "gpt-new-upstream"\n'


def test_sighup_reloads_a_good_config_and_keeps_the_running_one_on_a_bad_one(
        two_workers: GatewayProcess, fake_upstream: FakeUpstream) -> None:
    gateway = two_workers
    path = Path(gateway.config_path)
    good = path.read_text()
    try:
        workers = gateway.worker_pids()
        assert _answers(gateway, "gpt-new") == [404] * 6
        # A stream in flight when the reload comes finishes on the gateway that started it.
        stream = gateway.openai().chat.completions.create(
            model="gpt-test", messages=MESSAGES, stream=True,
            extra_body={"extra_headers": {"x-fake-scenario": "slow-chunks-100,chunks-10"}})
        chunks = [next(stream)]

        path.write_text(good + NEW_MODEL)
        gateway.reload()
        reloaded = _wait_for_lines(gateway, "config_reloaded", len(workers))
        assert sorted(line["pid"] for line in reloaded) == sorted(workers), gateway.log()
        chunks += list(stream)
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert _answers(gateway, "gpt-new") == [200] * 6
        assert fake_upstream.requests[-1].json["model"] == "gpt-new-upstream"

        # A bad file (an unknown key, next to a new secret): every worker keeps the config it runs and
        # says why, naming the key; no value of the file is in the message.
        path.write_text(good + NEW_MODEL + '\n[providers.other]\ntype = "openai"\napi_key = "sk-reload-secret-0123456789"\n'
                                           'colour = "blue"\n')
        gateway.reload()
        failed = _wait_for_lines(gateway, "config_reload_failed", len(workers))
        assert sorted(line["pid"] for line in failed) == sorted(workers), gateway.log()
        assert all("`providers.other.colour`: unknown key" in line["error"] for line in failed)
        assert _answers(gateway, "gpt-new") == [200] * 6
        assert gateway.worker_pids() == workers  # reloaded in place: no worker was restarted
        assert "sk-reload-secret-0123456789" not in gateway.log()
        assert "blue" not in gateway.log()
    finally:
        path.write_text(good)  # for the module's other tests (what runs is the good file and gpt-new)


def test_workers_auto_runs_one_worker_per_available_core(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(test_config(fake_upstream.url))
    gateway = GatewayProcess(str(path))
    gateway.command[gateway.command.index("--workers") + 1] = "auto"
    with gateway:
        cores = available_cores()
        assert f"({cores} worker(s)" in gateway.log()
        if cores > 1:
            assert len(gateway.worker_pids()) == cores
        assert gateway.openai().chat.completions.create(model="mock/m", messages=MESSAGES).choices


def test_available_cores_follow_the_cgroup_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cores(str(tmp_path)) == affinity
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs: 2 workers (rounded up)
    assert available_cores(str(tmp_path)) == min(affinity, 2)
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert available_cores(str(tmp_path)) == 1
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # cgroup v1, unlimited
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cores(str(tmp_path)) == affinity
