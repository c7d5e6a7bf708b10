"""A record the store refuses never blocks the others: it is quarantined, the rest is written, and a
replay goes on past bad lines and bad records. Also: the store's state in ``/readyz`` and the spill
backlog after a restart.

The refused record is real: the fake upstream reports a cached-token count beyond 64 bits (the
``cache-read-<n>`` scenario), which neither SQLite's INTEGER nor PostgreSQL's BIGINT can hold.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx2

from logs_client import Logs
from respan_gateway.testing import TEST_KEY

MESSAGES = [{"role": "user", "content": "Say hello"}]
BEYOND_BIGINT = 9223372036854775808
REFUSED = {"extra_headers": {"x-fake-scenario": f"cache-read-{BEYOND_BIGINT}"}}


def _ask(client: Any, **extra: Any) -> str:
    raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES, extra_body=extra or None)
    assert raw.status_code == 200
    return raw.headers["x-respan-log-id"]


def _status(url: str, log_id: str) -> int:
    return httpx2.get(f"{url}/api/request-logs/{log_id}/", headers={"authorization": f"Bearer {TEST_KEY}"}, timeout=10).status_code


def _quarantined(spill: Path) -> list[Any]:
    return [line for f in sorted(spill.glob("quarantined_request_logs-*.jsonl")) for line in f.read_bytes().splitlines()]


def _metric(url: str, name: str) -> float:
    for line in httpx2.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def _wait_until(check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def test_a_record_the_store_refuses_is_quarantined_and_every_other_is_written(logged_gateway, tmp_path, capfd) -> None:
    gw = logged_gateway(flush_interval=30)  # nothing is written before the read: one batch holds all three
    client = gw.openai()
    good = [_ask(client)]
    refused = _ask(client, **REFUSED)
    good.append(_ask(client))
    logs = Logs(gw.url)
    assert [logs.get(log_id)["unique_id"] for log_id in good] == good  # the read flushes the batch
    assert _status(gw.url, refused) == 404

    spill = tmp_path / "spill"
    assert [json.loads(line)["unique_id"] for line in _quarantined(spill)] == [refused]
    assert not list(spill.glob("request_logs-*.jsonl")), "nothing went to the spill file: the store is up"
    assert _metric(gw.url, "respan_gateway_log_records_quarantined_total") == 1
    assert _metric(gw.url, "respan_gateway_log_store_up") == 1
    ready = httpx2.get(gw.url + "/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    out = capfd.readouterr().out  # the process log, as the in-process server renders it
    assert any("request_log_quarantined" in line and refused in line for line in out.splitlines()), out

    # Logging goes on for everyone, record by record too.
    later = _ask(client)
    assert logs.get(later)["unique_id"] == later


def _record(unique_id: str, **fields: Any) -> bytes:
    return json.dumps({"unique_id": unique_id, "tenant": "acme", "model": "gpt-test", **fields}).encode()


def test_replay_goes_past_bad_lines_and_refused_records(logged_gateway, tmp_path) -> None:
    """Spill files left by a previous run: a cut line, a line that is not UTF-8 and a refused record
    in the first file must not keep the good records of either file out of the store."""
    spill = tmp_path / "spill"
    spill.mkdir()
    (spill / "request_logs-1-1000-1.jsonl").write_bytes(b"\n".join([
        _record("old-good-1"),
        b'{"unique_id": "cut-by-a-cr',
        b'{"unique_id": "not-utf8", "tenant": "acme", "note": "bad \xff byte"}',
        _record("old-refused", prompt_tokens=BEYOND_BIGINT),
        _record("old-good-2"),
    ]) + b"\n")
    (spill / "request_logs-2-2000-1.jsonl").write_bytes(_record("old-good-3") + b"\n")

    gw = logged_gateway(retry_interval=0.2)
    assert _wait_until(lambda: not list(spill.glob("request_logs-*.jsonl"))), "every spill file is replayed and deleted"
    logs = Logs(gw.url)
    for log_id in ("old-good-1", "old-good-2", "old-good-3"):
        assert logs.get(log_id)["unique_id"] == log_id
    assert _status(gw.url, "old-refused") == 404
    kept = _quarantined(spill)
    assert len(kept) == 3 and b"cut-by-a-cr" in kept[0] + kept[1] and b"\xff" in kept[0] + kept[1]
    assert json.loads(kept[2])["unique_id"] == "old-refused"
    assert _metric(gw.url, "respan_gateway_log_spill_pending") == 0
    assert _metric(gw.url, "respan_gateway_log_store_up") == 1


def _sqlite_gateway(gateway_factory: Any, db: Path, spill: Path) -> Any:
    return gateway_factory(f'[database]\nurl = "sqlite:///{db}"\ncommand_timeout = 0.3\n'
                           f'[logging]\nspill_dir = "{spill}"\nflush_interval = 0.05\nretry_interval = 0.2\n'
                           f'write_timeout = 0.5\n')


def _locked(db: Path) -> sqlite3.Connection:
    """Another connection holding the write lock: SQLite readers still read (WAL), writers fail."""
    blocker = sqlite3.connect(db, timeout=5, isolation_level=None)
    blocker.execute("PRAGMA journal_mode=WAL")
    blocker.execute("BEGIN EXCLUSIVE")
    return blocker


def test_spill_pending_counts_the_files_a_previous_run_left(gateway_factory, tmp_path) -> None:
    db, spill = tmp_path / "respan.sqlite3", tmp_path / "spill"
    spill.mkdir()
    (spill / "request_logs-1-1000-1.jsonl").write_bytes(b"".join(_record(f"left-{i}") + b"\n" for i in range(3)))
    blocker = _locked(db)  # the store is down when the gateway starts: the files wait
    try:
        gw = _sqlite_gateway(gateway_factory, db, spill)
        assert _metric(gw.url, "respan_gateway_log_spill_pending") == 3
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert _wait_until(lambda: _metric(gw.url, "respan_gateway_log_spill_pending") == 0)
    assert Logs(gw.url).get("left-2")["unique_id"] == "left-2"


def test_readyz_is_not_ready_while_the_log_store_refuses_writes(gateway_factory, tmp_path) -> None:
    db, spill = tmp_path / "respan.sqlite3", tmp_path / "spill"
    gw = _sqlite_gateway(gateway_factory, db, spill)
    assert httpx2.get(gw.url + "/readyz", timeout=10).status_code == 200
    blocker = _locked(db)
    try:
        _ask(gw.openai())
        ready = _wait_until(lambda: (r := httpx2.get(gw.url + "/readyz", timeout=10)).status_code == 503 and r)
        assert ready, "/readyz says ready while records cannot be written"
        assert ready.json()["checks"] == {"database": True, "logging": False}
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert _wait_until(lambda: httpx2.get(gw.url + "/readyz", timeout=10).status_code == 200)
