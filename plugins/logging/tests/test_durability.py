"""No record is lost: with the store stopped and restarted under load, and on SIGTERM with requests in flight.

The outage is real: PostgreSQL is reached through a TCP proxy that the test shuts (every connection
cut, new ones refused) and reopens; SQLite is held under an exclusive lock by another connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2

from conftest import PG_URL
from respan_gateway.testing import TEST_KEY, test_config
from respan_gateway.testing.gateway_server import GatewayProcess
from respan_gateway.testing.tcp_proxy import TcpProxy

MESSAGES = [{"role": "user", "content": "Say hello"}]
OUTAGE = {"write_timeout": 0.5, "retry_interval": 0.3, "batch_size": 5}


def _pg_ids(schema: str) -> list[str]:
    import asyncpg

    async def run() -> list[str]:
        conn = await asyncpg.connect(PG_URL, timeout=3)
        try:
            rows = await conn.fetch(f'SELECT unique_id FROM "{schema}".request_logs')
            return [r["unique_id"] for r in rows]
        finally:
            await conn.close()

    return asyncio.run(run())


def _sqlite_ids(path: Path) -> list[str]:
    conn = sqlite3.connect(path, timeout=10)
    try:
        return [r[0] for r in conn.execute("SELECT unique_id FROM request_logs")]
    finally:
        conn.close()


def _one_request(base_url: str, n: int) -> str:
    r = httpx2.post(base_url + "chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"}, timeout=30,
                    json={"model": "gpt-test", "messages": MESSAGES, "metadata": {"n": n}})
    assert r.status_code == 200, r.text
    return r.headers["x-respan-log-id"]


def _load(base_url: str, count: int, outage: Any, felt: Any) -> list[str]:
    """``count`` requests from 4 clients; the outage starts after a third of them were sent and lasts
    until the middle third are answered and ``felt()`` is true (the writer failed and spilled), so
    that it bites however slow the machine is (a fixed window can pass before any record is written)."""
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(_one_request, base_url, i) for i in range(count // 3)]
        with outage():
            during = [pool.submit(_one_request, base_url, i) for i in range(count // 3, 2 * count // 3)]
            futures += during
            assert _wait_until(lambda: all(f.done() for f in during) and felt(), 120), \
                "the writer never failed during the outage"
        futures += [pool.submit(_one_request, base_url, i) for i in range(2 * count // 3, count)]
        return [f.result() for f in futures]


def _wait_until(check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def _all_stored(read: Any, expected: int, timeout: float = 60) -> list[str]:
    """The stored ids, once there are ``expected`` of them (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while True:
        ids = read()
        if len(ids) >= expected or time.monotonic() > deadline:
            return ids
        time.sleep(0.1)


def test_postgres_stopped_and_restarted_under_load_loses_nothing(gateway_factory, postgres_schema, tmp_path) -> None:
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxy.open()
    schema = f"{postgres_schema}_outage"
    try:
        lines = "\n".join(f"{k} = {v}" for k, v in OUTAGE.items())
        gw = gateway_factory(
            f'[database]\nurl = "postgresql://postgres@127.0.0.1:{proxy.port}/test"\nschema = "{schema}"\n'
            f'connect_timeout = 0.5\ncommand_timeout = 1.0\npool_size = 2\n'
            f'[logging]\nspill_dir = "{tmp_path}/spill"\nflush_interval = 0.05\n{lines}\n')

        @contextlib.contextmanager
        def outage() -> Iterator[None]:
            proxy.shut()
            try:
                yield
            finally:
                proxy.open()

        writer = dict(gw.gateway.observers)["logging"].writer
        ids = _load(gw.base_url, 45, outage, lambda: writer.spilled > 0)
        assert writer.write_failures > 0 and writer.spilled > 0, "the outage sent records to the spill file"
        stored = _all_stored(lambda: _pg_ids(schema), len(ids))
        assert sorted(stored) == sorted(ids)  # every record, once
        assert _wait_until(lambda: writer.spill.pending == 0 and writer.store_up, 30)
        assert not list((tmp_path / "spill").glob("*.jsonl")), "replayed spill files are deleted"
    finally:
        proxy.shut()


def test_sqlite_locked_under_load_loses_nothing(gateway_factory, tmp_path) -> None:
    db = tmp_path / "respan.sqlite3"
    lines = "\n".join(f"{k} = {v}" for k, v in OUTAGE.items())
    gw = gateway_factory(f'[database]\nurl = "sqlite:///{db}"\ncommand_timeout = 0.3\n'
                         f'[logging]\nspill_dir = "{tmp_path}/spill"\nflush_interval = 0.05\n{lines}\n')

    @contextlib.contextmanager
    def outage() -> Iterator[None]:
        blocker = sqlite3.connect(db, timeout=5, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()

    writer = dict(gw.gateway.observers)["logging"].writer
    ids = _load(gw.base_url, 30, outage, lambda: writer.spilled > 0)
    assert writer.write_failures > 0 and writer.spilled > 0, "the lock sent records to the spill file"
    stored = _all_stored(lambda: _sqlite_ids(db), len(ids))
    assert sorted(stored) == sorted(ids)


def test_sigterm_with_requests_in_flight_loses_no_record(fake_upstream, tmp_path) -> None:
    db = tmp_path / "respan.sqlite3"
    config = tmp_path / "gateway.toml"
    # A long flush interval: records are still in memory when SIGTERM comes; shutdown must write them.
    config.write_text(test_config(fake_upstream.url, f'[database]\nurl = "sqlite:///{db}"\n'
                                                     f'[logging]\nspill_dir = "{tmp_path}/spill"\nflush_interval = 30\n'))
    with GatewayProcess(str(config)) as proc:
        started = threading.Barrier(9)
        results: list[str] = []

        def stream(i: int) -> None:
            with httpx2.stream("POST", proc.base_url + "chat/completions", timeout=30,
                               headers={"authorization": f"Bearer {TEST_KEY}"},
                               json={"model": "gpt-test", "messages": MESSAGES, "stream": True,
                                     "extra_headers": {"x-fake-scenario": "slow-chunks-150"}}) as r:
                log_id = r.headers["x-respan-log-id"]
                started.wait(60)
                body = "".join(r.iter_text())
            assert body.endswith("data: [DONE]\n\n"), body[-200:]
            results.append(log_id)

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        done_before = [_one_request(proc.base_url, i) for i in range(4)]
        started.wait(60)
        assert proc.terminate(timeout=30) == 0, proc.output
        for t in threads:
            t.join(60)
    assert len(results) == 8, "every in-flight stream finishes during the graceful shutdown"
    assert sorted(_sqlite_ids(db)) == sorted(results + done_before)


def test_queue_bounded_by_bytes_spills_big_records_and_loses_none(gateway_factory, tmp_path) -> None:
    """Records of 100 KB prompts while the store is stuck (SQLite locked; the writer waits in its
    busy timeout, not failing): memory holds what fits in ``queue_bytes`` (the batch being written
    counts), the rest goes to the spill file; once the lock goes, every record is stored, once."""
    db = tmp_path / "respan.sqlite3"
    # A record weighs about 100 KB (the prompt, stored once: in prompt_messages) + 2 KB:
    # three fit in 350,000 bytes, a fourth does not. queue_size is far away: only bytes can bind.
    gw = gateway_factory(f'[database]\nurl = "sqlite:///{db}"\ncommand_timeout = 60\n'
                         f'[logging]\nspill_dir = "{tmp_path}/spill"\nflush_interval = 0.05\nwrite_timeout = 60\n'
                         f'retry_interval = 0.3\nqueue_size = 10000\nqueue_bytes = 350000\n')
    writer = dict(gw.gateway.observers)["logging"].writer
    big = [{"role": "user", "content": "word " * 20_000}]
    blocker = sqlite3.connect(db, timeout=5, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        ids = []
        for n in range(8):
            r = httpx2.post(gw.base_url + "chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"},
                            timeout=30, json={"model": "gpt-test", "messages": big, "metadata": {"n": n}})
            assert r.status_code == 200, r.text
            ids.append(r.headers["x-respan-log-id"])
        assert _wait_until(lambda: writer.spilled + len(writer.queue) >= 7, 30)
        assert writer.spilled == 5, "three records in memory (one of them in the stuck batch), five on disk"
        assert writer.write_failures == 0, "the store was slow, not down: the byte bound spilled them"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    stored = _all_stored(lambda: _sqlite_ids(db), len(ids))
    assert sorted(stored) == sorted(ids)  # every record, once: the spilled ones replayed
    assert _wait_until(lambda: writer.spill.pending == 0 and writer.queued_bytes == 0, 30)
