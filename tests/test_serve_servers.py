"""`respan-gateway serve --server hypercorn|uvicorn|granian`: the same gateway on each ASGI server.

The CLI runs as a user runs it (a subprocess on a real socket); the openai SDK drives it; the fake
upstream records what reached it. uvicorn and granian are optional packages (`pip install
'respan-gateway[servers]'`): their cases are skipped, with the reason, when they are not installed.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx2
import pytest

from respan_gateway.testing import TEST_KEY, FakeUpstream, GatewayProcess, test_config

MESSAGES = [{"role": "user", "content": "hi"}]
SERVERS = ["hypercorn", "uvicorn", "granian"]


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest) -> str:
    if importlib.util.find_spec(request.param) is None:
        pytest.skip(f"{request.param} is not installed (pip install 'respan-gateway[servers]')")
    return request.param


def start(tmp_path: Path, upstream: FakeUpstream, server: str) -> GatewayProcess:
    path = tmp_path / "gateway.toml"
    path.write_text(test_config(upstream.url))
    gateway = GatewayProcess(str(path))
    gateway.command += ["--server", server]
    return gateway.start()


def test_answers_streams_and_stops_reading_when_the_client_leaves(tmp_path: Path, fake_upstream: FakeUpstream, server: str) -> None:
    gateway = start(tmp_path, fake_upstream, server)
    try:
        client = gateway.openai()
        raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
        assert raw.parse().choices[0].message.content == "Hello from the fake upstream!"
        assert len(raw.headers["x-respan-gateway-request-id"]) == 24
        chunks = list(client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the fake upstream!"

        fake_upstream.reset()
        stream = client.chat.completions.create(
            model="gpt-test", messages=MESSAGES, stream=True,
            extra_body={"extra_headers": {"x-fake-scenario": "slow-chunks-100,chunks-100"}})
        for i, _ in enumerate(stream):
            if i == 2:
                break
        stream.close()
        assert fake_upstream.wait_for_disconnect(timeout=60), f"{server}: the gateway kept reading from the upstream"
        deadline = time.monotonic() + 60
        while fake_upstream.open_streams and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fake_upstream.open_streams == 0
    finally:
        gateway.stop()


def test_sigterm_finishes_the_stream_in_flight(tmp_path: Path, fake_upstream: FakeUpstream, server: str) -> None:
    gateway = start(tmp_path, fake_upstream, server)
    try:
        stream = gateway.openai().chat.completions.create(
            model="gpt-test", messages=MESSAGES, stream=True,
            extra_body={"extra_headers": {"x-fake-scenario": "slow-chunks-100,chunks-8"}})
        chunks = [next(stream)]
        code: list[int] = []
        stopper = threading.Thread(target=lambda: code.append(gateway.terminate()))
        stopper.start()
        chunks += list(stream)
        stopper.join(90)
    finally:
        gateway.stop()
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).count(" ") == 7
    assert code == [0], gateway.output


def test_unknown_server_is_refused_by_name(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(test_config(fake_upstream.url))
    done = subprocess.run([sys.executable, "-m", "respan_gateway.cli", "serve", "--config", str(path), "--server", "gunicorn"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "invalid choice: 'gunicorn'" in done.stderr


def _stored_ids(db: Path) -> list[str]:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return [r[0] for r in conn.execute("SELECT unique_id FROM request_logs")]
    finally:
        conn.close()


def _start_workers(tmp_path: Path, upstream: FakeUpstream, server: str, **logging: object) -> tuple[GatewayProcess, Path]:
    db = tmp_path / "respan.sqlite3"
    settings = "\n".join(f"{k} = {v}" for k, v in logging.items())
    path = tmp_path / "gateway.toml"
    # The graceful timeout bounds a drain without a master too (cli._end_without_master).
    path.write_text(test_config(upstream.url, f'[server]\ngraceful_timeout = 30\n[database]\nurl = "sqlite:///{db}"\n'
                                              f'[logging]\nspill_dir = "{tmp_path}/spill"\n{settings}\n'))
    gateway = GatewayProcess(str(path), workers=2)
    gateway.command += ["--server", server]
    return gateway.start(), db


def test_sigterm_to_the_process_group_drains_every_worker(tmp_path: Path, fake_upstream: FakeUpstream, server: str) -> None:
    """systemd sends SIGTERM to every process of the unit: each worker finishes its streams and
    writes its records (a long flush interval keeps them in memory until then)."""
    gateway, db = _start_workers(tmp_path, fake_upstream, server, flush_interval=30)
    try:
        assert len(gateway.worker_pids()) == 2, gateway.worker_pids()
        started = threading.Barrier(7)
        log_ids: list[str] = []
        finished: list[str] = []

        def stream() -> None:
            with httpx2.stream("POST", gateway.base_url + "chat/completions", timeout=30,
                               headers={"authorization": f"Bearer {TEST_KEY}"},
                               json={"model": "gpt-test", "messages": MESSAGES, "stream": True,
                                     "extra_headers": {"x-fake-scenario": "slow-chunks-150,chunks-8"}}) as r:
                log_ids.append(r.headers["x-respan-log-id"])
                chunks = r.iter_text()
                first = next(chunks)
                started.wait(60)
                body = first + "".join(chunks)
            if body.endswith("data: [DONE]\n\n"):
                finished.append(r.headers["x-respan-log-id"])

        threads = [threading.Thread(target=stream) for _ in range(6)]
        for t in threads:
            t.start()
        started.wait(60)
        code = gateway.terminate(timeout=60, group=True)
        for t in threads:
            t.join(90)
    finally:
        gateway.stop()
    assert sorted(finished) == sorted(log_ids) and len(log_ids) == 6, gateway.output
    assert code == 0, gateway.output
    assert sorted(_stored_ids(db)) == sorted(log_ids), gateway.output


def _kill_master_and_wait(gateway: GatewayProcess, workers: list[int], server: str,
                          reading: Callable[[], str] | None = None) -> str:
    """SIGKILL the master (no handler runs): its workers must end by themselves, within a minute.
    ``reading`` reads the rest of a response in flight meanwhile: its text is returned."""
    os.kill(gateway.process.pid, signal.SIGKILL)
    gateway.process.wait(10)
    rest = reading() if reading is not None else ""
    deadline = time.monotonic() + 60
    while gateway.group_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not gateway.group_alive(), (f"{server}: workers {workers} kept running without their master:\n"
                                       f"{gateway.group_state()}\n{gateway.log()}")
    return rest


def test_workers_exit_when_their_master_is_killed(tmp_path: Path, fake_upstream: FakeUpstream, server: str) -> None:
    """A worker that serves drains when its master dies: the stream in flight ends complete and its
    log record is written (a long flush interval keeps it in memory until the shutdown)."""
    gateway, db = _start_workers(tmp_path, fake_upstream, server, flush_interval=30)
    try:
        workers = gateway.worker_pids()
        assert len(workers) == 2, workers
        with httpx2.stream("POST", gateway.base_url + "chat/completions", timeout=60,
                           headers={"authorization": f"Bearer {TEST_KEY}"},
                           json={"model": "gpt-test", "messages": MESSAGES, "stream": True,
                                 "extra_headers": {"x-fake-scenario": "slow-chunks-150,chunks-8"}}) as r:
            log_id = r.headers["x-respan-log-id"]
            chunks = r.iter_text()
            body = next(chunks)
            body += _kill_master_and_wait(gateway, workers, server, reading=lambda: "".join(chunks))
    finally:
        gateway.stop()
    assert body.endswith("data: [DONE]\n\n"), body
    assert _stored_ids(db) == [log_id], gateway.output


def test_workers_exit_when_their_master_is_killed_while_they_start(tmp_path: Path, fake_upstream: FakeUpstream, server: str) -> None:
    """The master killed as soon as its workers exist, while they still import and build the app
    (before their server has installed its signal handlers): they end all the same."""
    path = tmp_path / "gateway.toml"
    path.write_text(test_config(fake_upstream.url))
    gateway = GatewayProcess(str(path), workers=2)
    gateway.command += ["--server", server]
    gateway.launch()
    try:
        deadline = time.monotonic() + gateway.ready_timeout
        while len(gateway.worker_pids()) < 2 and gateway.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        workers = gateway.worker_pids()
        assert len(workers) == 2, gateway.log()
        _kill_master_and_wait(gateway, workers, server)
    finally:
        gateway.stop()
