"""The SQLite file deleted (or replaced) while the gateway runs: the records written afterwards go to
the file now at the configured path, not to the unlinked one, and the gateway stays ready."""

from __future__ import annotations

import sqlite3
import time

import httpx2

from logs_client import Logs
from respan_gateway.testing import TEST_KEY

MESSAGES = [{"role": "user", "content": "Say hello"}]


def _stored(path) -> list[str]:
    conn = sqlite3.connect(path, timeout=10)
    try:
        return [r[0] for r in conn.execute("SELECT unique_id FROM request_logs")]
    finally:
        conn.close()


def test_records_after_the_file_is_deleted_go_to_a_new_file(gateway_factory, tmp_path) -> None:
    db = tmp_path / "respan.sqlite3"
    gw = gateway_factory(f'[database]\nurl = "sqlite:///{db}"\n'
                         f'[logging]\nspill_dir = "{tmp_path}/spill"\nflush_interval = 0.05\n')
    client, logs = gw.openai(), Logs(gw.url)
    before = client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES).headers["x-respan-log-id"]
    assert logs.get(before)["unique_id"] == before

    db.unlink()  # an operator's mistake, or a cleanup job; the -wal/-shm files stay
    after = [client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES).headers["x-respan-log-id"]
             for _ in range(3)]
    for log_id in after:
        # A read that lands while the store reopens the file gets the store's 503 (retrying): wait it out.
        assert logs.wait_for(log_id)["unique_id"] == log_id
    deadline = time.monotonic() + 5
    while not db.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(_stored(db)) == sorted(after), "the records are in the file at the configured path"
    ready = httpx2.get(gw.url + "/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["checks"]["database"] is True


def test_a_full_database_is_reported_as_full_not_as_a_failed_rollback(gateway_factory, tmp_path, capfd) -> None:
    """SQLite rolls back by itself on a full disk; the ROLLBACK after it fails, and must not be the
    error the process log shows."""
    db = tmp_path / "respan.sqlite3"
    gw = gateway_factory(f'[database]\nurl = "sqlite:///{db}"\n'
                         f'[logging]\nspill_dir = "{tmp_path}/spill"\nflush_interval = 30\n')
    database = gw.gateway.database
    pages = gw.call(database.fetchval("PRAGMA page_count"))
    gw.call(database.execute(f"PRAGMA max_page_count = {pages}"))  # this connection's disk is now full
    client = gw.openai()
    log_id = client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "long " * 20000}]).headers["x-respan-log-id"]
    httpx2.get(f"{gw.url}/api/request-logs/{log_id}/", headers={"authorization": f"Bearer {TEST_KEY}"}, timeout=10)
    out, down = "", []
    deadline = time.monotonic() + 10  # the read flushes the queue; under load the write may end later
    while not down and time.monotonic() < deadline:
        time.sleep(0.05)
        out += capfd.readouterr().out
        down = [line for line in out.splitlines() if "request_log_store_down" in line]
    assert down and "database or disk is full" in down[0], out
    assert "cannot rollback" not in down[0]
