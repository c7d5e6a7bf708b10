"""The gateway's process log (structlog configured by respan_gateway.log) writes JSON lines, secrets redacted.

Run in a subprocess, as `respan-gateway serve` runs it: configure() binds the logger to stdout.
"""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import structlog
from respan_gateway.log import configure
configure()
log = structlog.get_logger("respan_gateway")
log.info("upstream_failed", provider="fake", api_key="sk-abcdefghijklmnop", detail="Bearer sk-abcdefghijklmnop")
log.info("client_said", text="my key rsp_AbCd1234.abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN is broken")
try:
    raise ValueError("boom")
except ValueError as exc:
    log.error("unhandled_error", exc_info=exc)
"""


def test_process_log_lines_are_json_with_secrets_redacted() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["event"] for line in lines] == ["upstream_failed", "client_said", "unhandled_error"]
    first = lines[0]
    assert first["level"] == "info" and first["provider"] == "fake"
    assert first["api_key"] == "[redacted]"
    assert "sk-abcdefghijklmnop" not in done.stdout
    # A gateway key issued by the keys API: its prefix stays readable, its secret does not.
    assert lines[1]["text"] == "my key rsp_AbCd1234.[redacted] is broken"
    assert "ValueError: boom" in lines[2]["exception"]
