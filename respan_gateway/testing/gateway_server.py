"""Run the gateway on a real socket for tests: ``GatewayServer`` and a config to start from."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx2

from ..app import create_app
from ..config import Config
from ._server import ServerThread

#: The gateway API key every test config accepts.
TEST_KEY = "sk-respan-test-key"


def test_config(upstream_url: str, extra: str = "", *, keys: str = "") -> str:
    """A config (TOML text) with one key, the fake upstream as provider ``fake``, and a small catalog.

    ``extra`` is appended: more sections, or tables that add to the ones here. ``keys``: more inline
    tables for ``[auth] keys``. Slugs: ``gpt-test`` (upstream name ``gpt-test-upstream``),
    ``fake/<anything>``, ``mock/<anything>``. Unless ``extra`` has its own ``[database]``, the
    gateway's database is a fresh SQLite file in a temporary folder (removed when the process exits).
    """
    if "[database]" not in extra:
        extra = f'{extra}\n[database]\nurl = "sqlite:///{_scratch_dir()}/respan.sqlite3"\n'

    return f"""
[auth]
keys = [{{ key = "{TEST_KEY}", tenant = "acme", name = "test" }}, {keys}]

[providers.fake]
type = "openai_compatible"
base_url = "{upstream_url}/v1"
api_key = "sk-upstream-secret-key"

[providers.mock]
type = "mock"

[models."gpt-test"]
provider = "fake"
upstream_model = "gpt-test-upstream"
input_cost = 1.0
output_cost = 2.0
{extra}
"""


def _scratch_dir() -> str:
    path = tempfile.mkdtemp(prefix="respan-test-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


test_config.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test, wherever it is imported


class GatewayServer:
    """The gateway app (built from a config) served by hypercorn on 127.0.0.1:<free port> in a thread.

    ``base_url`` is what an OpenAI SDK is pointed at (``.../api/``); ``gateway`` is the running
    :class:`~respan_gateway.Gateway`, for a test that inspects it.
    """

    def __init__(self, config: Config | str, plugins: tuple[Any, ...] = ()) -> None:
        self.config = config if isinstance(config, Config) else Config.from_text(config, "<test config>")
        self.app = create_app(self.config, plugins=plugins)
        self.gateway = self.app.gateway
        self._server = ServerThread(self.app, name="gateway")

    def start(self) -> GatewayServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def base_url(self) -> str:
        return self._server.url + "/api/"

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the gateway's event loop (e.g. to flush a plugin's queue)."""
        return self._server.call(coro, timeout)

    def record(self, log_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """The log record ``log_id`` (the ``x-respan-log-id`` of a response), from the logs API as a user
        reads it; waits up to ``timeout`` s for it to be written (records are written in batches)."""
        deadline = time.monotonic() + timeout
        while True:
            r = httpx2.get(f"{self.url}/api/request-logs/{log_id}/", headers={"authorization": f"Bearer {TEST_KEY}"}, timeout=10)
            if r.status_code == 200 or time.monotonic() > deadline:
                assert r.status_code == 200, r.text
                return r.json()
            time.sleep(0.05)

    def openai(self, **kwargs: Any) -> Any:
        """An ``openai.OpenAI`` client pointed at this gateway (no SDK retries unless asked)."""
        import openai

        kwargs.setdefault("api_key", TEST_KEY)
        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.base_url, **kwargs)


class GatewayProcess:
    """The real CLI, ``respan-gateway serve``, as a subprocess on a free port (for start-up, signal
    and multi-worker tests). ``env`` adds to the environment (e.g. ``PYTHONPATH`` for a plugin
    installed in a folder).

    It runs in a process group of its own (its workers too), as under systemd: :meth:`stop` ends
    the whole group, gracefully first, so that no worker outlives a test.

    :meth:`start` returns once ``/healthz`` answers and, with several workers, every worker process
    exists. ``ready_timeout`` is only a deadline (start-up takes ~3 s on a quiet machine, over 20 s
    on a busy 2-core one: imports and the app's build in each worker), hence generous."""

    def __init__(self, config_path: str, *, workers: int = 1, env: dict[str, str] | None = None, ready_timeout: float = 180) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.url + "/api/"
        self.config_path = config_path
        self.workers = workers
        self.env = {**os.environ, **(env or {})}
        self.ready_timeout = ready_timeout
        self.command = [sys.executable, "-m", "respan_gateway.cli", "serve", "--config", config_path,
                        "--port", str(self.port), "--workers", str(workers)]
        self.process: Any = None
        self.output = ""

    def launch(self) -> GatewayProcess:
        """Start the process and return at once (:meth:`start` waits until it serves)."""
        # Output goes to a file, not a pipe: a pipe nobody reads would block a chatty gateway.
        self._log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(self.command, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        return self

    def start(self) -> GatewayProcess:
        self.launch()
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._read_output()
                raise RuntimeError(f"respan-gateway exited with {self.process.returncode}:\n{self.output}")
            try:
                if (httpx2.get(self.url + "/healthz", timeout=5).status_code == 200
                        and (self.workers <= 1 or len(self.worker_pids()) >= self.workers)):
                    return self
            except httpx2.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        self._read_output()
        raise RuntimeError(f"respan-gateway did not become healthy in {self.ready_timeout} s:\n{self.output}")

    def terminate(self, timeout: float = 30, *, group: bool = False) -> int:
        """SIGTERM to the master (``group``: to every process of the group, as systemd sends it),
        then wait for the master: returns its exit code; ``output`` holds what it printed."""
        if group:
            self._signal_group(signal.SIGTERM)
        else:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self._read_output()
        return code

    def reload(self) -> None:
        """SIGHUP to the master, as an operator reloads the config (every worker reloads it)."""
        self.process.send_signal(signal.SIGHUP)

    def log(self) -> str:
        """Everything the gateway printed so far (stdout and stderr)."""
        return self._read_output()

    def worker_pids(self) -> list[int]:
        """The pids of the master's worker processes (its children, multiprocessing's helper left out)."""
        try:
            with open(f"/proc/{self.process.pid}/task/{self.process.pid}/children") as f:
                children = [int(pid) for pid in f.read().split()]
        except OSError:
            return []
        workers = []
        for pid in children:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"resource_tracker" in f.read():
                        continue
            except OSError:
                continue
            workers.append(pid)
        return workers

    def group_alive(self) -> bool:
        """Whether any process of the gateway's group is still running (a zombie, exited but not yet
        reaped by whoever inherited it, is not running)."""
        group = self.process.pid
        for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            # After the command: state, ppid, pgrp.
            if int(fields[2]) == group and fields[0] != b"Z":
                return True
        if os.path.isdir("/proc"):
            return False
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def group_state(self) -> str:
        """For a failure message: each running process of the group, its state, signal masks and
        where it waits in the kernel."""
        lines = []
        for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                if not entry.isdigit() or int(fields[2]) != self.process.pid or fields[0] == b"Z":
                    continue
                with open(f"/proc/{entry}/status") as f:
                    status = [line.strip() for line in f if line.startswith(
                        ("State", "PPid", "Threads", "SigQ", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt"))]
                with open(f"/proc/{entry}/wchan") as f:
                    status.append(f"wchan: {f.read()}")
            except (OSError, ValueError, IndexError):
                continue
            lines.append(f"pid {entry}: " + "; ".join(status))
        return "\n".join(lines)

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def _read_output(self) -> str:
        self._log.seek(0)
        self.output = self._log.read().decode(errors="replace")
        return self.output

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM to the whole group, wait up to ``timeout``, then SIGKILL what is left of it."""
        if self.process is None:
            return
        if self.process.poll() is None or self.group_alive():
            self._signal_group(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while (self.process.poll() is None or self.group_alive()) and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.process.poll() is None or self.group_alive():
                self._signal_group(signal.SIGKILL)
            self.process.wait(10)
        self._read_output()  # `output`: everything it printed, as after terminate()

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def openai(self, **kwargs: Any) -> Any:
        import openai

        kwargs.setdefault("api_key", TEST_KEY)
        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.base_url, **kwargs)
