"""``respan-gateway``: serve the gateway, or check a config file.

    respan-gateway serve [--config FILE] [--host H] [--port P] [--workers N|auto] [--server uvicorn|hypercorn|granian]
    respan-gateway check-config FILE
    respan-gateway <plugin command> [--config FILE] ...   (the auth plugin's `keys create|list|revoke`,
                                                           the prompts plugin's `prompts check DIR`)

A plugin adds a command through the ``register_commands`` hook: the CLI builds the gateway from the
command's ``--config`` (so the plugins are those the config loads), starts its database, and awaits
the command with the parsed arguments and the gateway.

With several workers, SIGTERM may reach the master only (``kill``), or every process of the group
(systemd's default): either way every worker stops accepting, finishes its streams and writes its
log records. A worker whose master is gone (killed) shuts down the same way (see
:func:`watch_master`), so no worker outlives its server.

SIGHUP reloads the config file: the master passes it to every worker, and each worker builds a new
gateway from the file and swaps it in, or keeps the one it has when the file is bad
(:class:`respan_gateway.app.ReloadingApp`). With several workers the master makes the folder of
``prometheus_client``'s multiprocess mode before they start and removes it at the end, so that
``/metrics`` on any worker reports all of them (:mod:`respan_gateway.metrics`).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import importlib.util
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, ServerSettings, find_config_file
from .gateway import Gateway
from .log import configure as configure_logs
from .metrics import MULTIPROC_DIR_ENV


def _build(path: str | None) -> tuple[Config, Gateway]:
    config = Config.from_file(find_config_file(path))
    return config, Gateway.build(config)


def check_config(args: argparse.Namespace) -> int:
    config, gateway = _build(args.file)
    pipeline = ", ".join(name for name, _ in gateway.middlewares) or "(none)"
    print(f"{config.source}: ok")
    print(f"  pipeline:  {pipeline}")
    print(f"  providers: {', '.join(f'{pid} ({p.settings.type or pid})' for pid, p in gateway.providers.items()) or '(none)'}")
    print(f"  models:    {len(config.models)} in the catalog")
    print(f"  commands:  {', '.join(sorted(gateway.commands)) or '(none)'}")
    return 0


def run_plugin_command(args: argparse.Namespace, gateway: Gateway) -> int:
    """A plugin's command (``register_commands``): awaited with the gateway's database started."""
    registration = gateway.commands[args.command]

    async def run() -> int | None:
        if gateway.database is not None:
            await gateway.database.start()
        try:
            return await registration.run(args, gateway)
        finally:
            if gateway.database is not None:
                await gateway.database.close()

    return int(asyncio.run(run()) or 0)


def _add_plugin_commands(sub: Any, argv: list[str]) -> list[str]:
    """When ``argv`` names no core command: build the gateway from its ``--config`` (taken out of
    ``argv`` wherever it stands, so that it may follow a plugin's own sub-subcommand) and add the
    plugins' commands to the parser; a config error stops the CLI, as for ``serve``. The arguments
    left to parse."""
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is None or first in sub.choices:
        return argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    configure_logs("warning", sys.stderr.buffer)  # the command's stdout is what its user reads
    _, gateway = _build(known.config)
    for name, registration in gateway.commands.items():
        if name in sub.choices:
            raise ConfigError(f"plugin `{registration.plugin}` registers the command `{name}`, a command of the core")
        parser = sub.add_parser(name, help=registration.help, description=registration.help,
                                epilog="--config FILE (anywhere on the line): the config file (default: "
                                       "$RESPAN_GATEWAY_CONFIG or config/gateway.toml)")
        if registration.arguments is not None:
            registration.arguments(parser)
        parser.set_defaults(func=lambda args, _gw=gateway: run_plugin_command(args, _gw), config=known.config)
    return rest


def serve(args: argparse.Namespace) -> int:
    path = find_config_file(args.config)
    config, _ = _build(str(path))  # fail fast, by name, before any worker starts
    server = config.server
    host = args.host or server.host
    port = args.port if args.port is not None else server.port
    workers = args.workers if args.workers is not None else server.workers
    workers = available_cores() if workers == "auto" else max(int(workers), 1)

    if importlib.util.find_spec(args.server) is None:
        raise ConfigError(f"--server {args.server}: the package `{args.server}` is not installed (pip install {args.server})")
    os.environ["RESPAN_GATEWAY_CONFIG"] = str(path.resolve())
    os.environ[MASTER_PID_ENV] = str(os.getpid())  # read by the workers: see watch_master()
    os.environ[SERVE_ENV] = "1"  # the workers' app reloads its config on SIGHUP (respan_gateway.asgi)
    os.environ[ORPHAN_GRACE_ENV] = str(math.ceil(server.graceful_timeout) + 5)  # see _end_without_master()
    # Spawned workers call watch_master() when they import the app; forked ones (granian) here.
    os.register_at_fork(before=_note_forking_pid, after_in_child=_after_fork_in_child)
    metrics_dir = None
    if workers > 1:  # one /metrics for the group: prometheus_client's multiprocess folder, made fresh
        metrics_dir = tempfile.mkdtemp(prefix="respan-metrics-")
        os.environ[MULTIPROC_DIR_ENV] = metrics_dir
    else:
        os.environ.pop(MULTIPROC_DIR_ENV, None)
    print(f"respan-gateway listening on http://{host}:{port} ({workers} worker(s), {args.server}, config {path})", flush=True)
    try:
        return SERVERS[args.server](server, host, port, workers)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def available_cores(root: str = "/sys/fs/cgroup") -> int:
    """The cores this process may use: its CPU affinity, bounded by its cgroup's CPU quota (a
    container's ``--cpus``, a Kubernetes CPU limit) when there is one, rounded up; at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(Path(root))
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(cores, 1)


def _cgroup_quota(root: Path) -> float | None:
    """CPUs of the cgroup quota: cgroup v2 ``cpu.max`` ("max 100000" or "200000 100000"), else v1's
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; None when unlimited or unreadable."""
    try:
        quota, _, period = (root / "cpu.max").read_text().strip().partition(" ")
        if quota == "max":
            return None
        return int(quota) / int(period or 100000)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def _forward_sighup(pids: Any) -> None:
    """The master's SIGHUP: each worker reloads the config itself (and keeps its own when it is bad)."""
    try:
        targets = list(pids())
    except Exception as exc:  # noqa: BLE001 - say it; the next SIGHUP tries again
        print(f"respan-gateway: SIGHUP not passed on to the workers: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return
    for pid in targets:
        try:
            os.kill(pid, signal.SIGHUP)
        except (ProcessLookupError, TypeError):
            pass


class SighupForwarder:
    """In a master with worker processes: SIGHUP is blocked (before any worker starts, so every
    worker inherits the mask, through fork and exec alike) and a thread waits for it and sends it on
    to the workers. A worker unblocks it once its handler is installed: a reload asked while a worker
    is still starting is delivered then, never lost, and never kills the worker (SIGHUP's default).
    The server's own SIGHUP handling (uvicorn and granian restart every worker) never runs."""

    def __init__(self) -> None:
        self.pids: Any = lambda: []

    def start(self, pids: Any = None) -> SighupForwarder:
        if pids is not None:
            self.pids = pids
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
            threading.Thread(target=self._run, name="respan-sighup", daemon=True).start()
        return self

    def _run(self) -> None:
        while True:
            signal.sigwait({signal.SIGHUP})
            _forward_sighup(self.pids)


def _serve_hypercorn(server: ServerSettings, host: str, port: int, workers: int) -> int:
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.run import run

    hc = HypercornConfig()
    hc.application_path = "respan_gateway.asgi:app"
    hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hc.worker_class = "uvloop" if _has_uvloop() else "asyncio"
    hc.workers = 0 if workers <= 1 else workers  # 0 = serve in this process
    hc.accesslog = None
    hc.errorlog = "-"
    hc.backlog = server.backlog
    hc.graceful_timeout = server.graceful_timeout
    hc.keep_alive_timeout = server.keep_alive_timeout
    if hc.workers == 0:
        return run(hc)
    return _hypercorn_master(hc, server)


def _hypercorn_master(hc: Any, server: ServerSettings) -> int:
    """hypercorn's own multi-worker loop lets a worker die at once on SIGTERM (it listens only to the
    master's event) and terminates the workers still draining once the first one is done. Here:
    every worker drains on its own SIGTERM or on the master's, and the master waits for all of them."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    sockets = hc.create_sockets()
    stop = ctx.Event()
    processes: list[Any] = []
    SighupForwarder().start(lambda: [p.pid for p in processes if p.is_alive()])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited until the worker installs its handlers
    processes += [ctx.Process(target=_hypercorn_worker, kwargs={"config": hc, "sockets": sockets, "stop": stop})
                  for _ in range(hc.workers)]
    for process in processes:
        process.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # SIGHUP reloads (Gateway.reload): each worker does it on its own signal, so pass it on.
    signal.signal(signal.SIGHUP, lambda *_: [os.kill(p.pid, signal.SIGHUP) for p in processes if p.is_alive() and p.pid])
    # A worker that dies on its own ends the server (as with hypercorn): the others drain.
    while any(p.is_alive() for p in processes):
        wait([p.sentinel for p in processes if p.is_alive()], timeout=1)
        if not stop.is_set() and any(p.exitcode is not None for p in processes):
            stop.set()
    _mark_dead([p.pid for p in processes])
    for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
        sock.close()
    codes = [p.exitcode for p in processes]
    return next((abs(c) for c in codes if c), 0)


def _hypercorn_worker(config: Any, sockets: Any, stop: Any) -> None:
    from hypercorn.asyncio.run import worker_serve
    from hypercorn.utils import load_application

    app = load_application(config.application_path, config.wsgi_max_body_size)

    async def serve() -> None:
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)

        async def shutdown_trigger() -> None:
            while not done.is_set() and not stop.is_set():
                try:
                    await asyncio.wait_for(done.wait(), 0.2)
                except asyncio.TimeoutError:
                    pass

        await worker_serve(app, config, sockets=sockets, shutdown_trigger=shutdown_trigger)

    if _has_uvloop():
        import uvloop

        uvloop.run(serve())
    else:
        asyncio.run(serve())


def _serve_uvicorn(server: ServerSettings, host: str, port: int, workers: int) -> int:
    # The default server (a base dependency, with httptools and uvloop): the least CPU per request of
    # the three, see docs/performance.md. It reports client disconnects as `http.disconnect`, as streams need.
    import uvicorn

    # uvicorn re-raises SIGTERM/SIGINT once it has drained; end with 0 then, as hypercorn does.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    options = dict(
        host=host, port=port, workers=max(workers, 1),
        loop="uvloop" if _has_uvloop() else "asyncio", http="auto", lifespan="on", access_log=False,
        backlog=server.backlog, timeout_keep_alive=int(server.keep_alive_timeout),
        timeout_graceful_shutdown=int(server.graceful_timeout), log_level="warning",
    )
    if workers <= 1:
        uvicorn.run("respan_gateway.asgi:app", **options)
        return 0
    # uvicorn's own master restarts every worker on SIGHUP (a worker that cannot start on a bad
    # config would then stop the server): here SIGHUP goes on to the workers, each reloads in place.
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config("respan_gateway.asgi:app", **options)
    forwarder = SighupForwarder().start()
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    forwarder.pids = lambda: [p.pid for p in supervisor.processes]
    supervisor.run()
    return 0


def _serve_granian(server: ServerSettings, host: str, port: int, workers: int) -> int:
    # Optional server (pip install granian): Rust HTTP stack, see docs/performance.md.
    from granian.server import Server

    # granian respawns every worker on SIGHUP; here SIGHUP goes on to the workers (always processes
    # of their own with granian), each reloads its config in place.
    forwarder = SighupForwarder().start()
    granian = Server(
        "respan_gateway.asgi:app", address=host, port=port, interface="asgi", workers=max(workers, 1),
        loop="uvloop" if _has_uvloop() else "asyncio", log_access=False, backlog=server.backlog,
        workers_kill_timeout=int(server.graceful_timeout) or None,
    )
    forwarder.pids = lambda: [getattr(getattr(w, "inner", w), "pid", None) for w in granian.wrks]
    granian.serve()
    return 0


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _mark_dead(pids: list[int | None]) -> None:
    """Exited workers' live gauges (requests in flight...) leave the group's sums."""
    path = os.environ.get(MULTIPROC_DIR_ENV)
    if not path:
        return
    from prometheus_client.multiprocess import mark_process_dead

    for pid in pids:
        if pid is not None:
            mark_process_dead(pid, path)


MASTER_PID_ENV = "RESPAN_GATEWAY_MASTER_PID"
#: Set by ``serve``: the seconds a worker whose master died may drain before the kernel ends it.
ORPHAN_GRACE_ENV = "RESPAN_GATEWAY_ORPHAN_GRACE"
#: Set by ``serve`` for its workers: the app they load reloads its config on SIGHUP.
SERVE_ENV = "RESPAN_GATEWAY_SERVE"
_PR_SET_PDEATHSIG = 1
#: The signal the kernel sends a worker when its master dies (``PR_SET_PDEATHSIG``): a real-time
#: signal of its own, which the worker turns into one SIGTERM (:func:`_master_gone`).
_MASTER_GONE = signal.SIGRTMIN + 1 if hasattr(signal, "SIGRTMIN") else signal.SIGTERM


def watch_master(*, serving: bool = False) -> None:
    """In a worker process of ``serve``: end when the master dies.

    While the worker starts (``serving`` false: it has nothing to drain yet) the kernel kills it
    (``PR_SET_PDEATHSIG`` with SIGKILL): no Python code has to run, so a worker busy loading the app
    or running its startup cannot miss it. Once it serves (the app calls this again with ``serving``
    after its startup), the death of the master is one SIGTERM: a graceful shutdown, streams drained
    and log records written. A master already gone before the setting is caught by comparing the
    parent's pid. Elsewhere (or outside ``serve``) nothing.

    The kernel sends the death signal once for each thread of the master the worker is handed to as
    the master's threads exit (the master has several: the SIGHUP forwarder, granian's watchers), so
    the graceful one is not SIGTERM itself: a granian worker that gets a second SIGTERM blocks for
    ever in granian's shutdown signal, holding the GIL. The first death signal sends SIGTERM once
    and ignores the others (:func:`_master_gone`)."""
    master = os.environ.get(MASTER_PID_ENV)
    if not master or not master.isdigit() or int(master) == os.getpid() or not sys.platform.startswith("linux"):
        return
    death = signal.SIGKILL
    if serving:
        death = signal.SIGTERM
        if _MASTER_GONE != signal.SIGTERM and threading.current_thread() is threading.main_thread():
            signal.signal(_MASTER_GONE, _master_gone)  # before the kernel may send it
            death = _MASTER_GONE
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, death, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(master):
        if serving:
            _end_without_master()
        else:
            os.kill(os.getpid(), signal.SIGKILL)


def _master_gone(signum: int, frame: object) -> None:
    signal.signal(signum, signal.SIG_IGN)  # the same death signal again (another thread of the master)
    _end_without_master()


def _end_without_master() -> None:
    """One SIGTERM: the worker drains its streams and flushes its records as on any shutdown. And a
    backstop that needs no Python code to run: SIGALRM's default action ends the process after the
    master's graceful timeout (plus a margin), should the server's shutdown hang (seen once in CI
    with granian, not reproduced)."""
    grace = os.environ.get(ORPHAN_GRACE_ENV, "")
    if grace.isdigit() and int(grace) > 0:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(int(grace))
    os.kill(os.getpid(), signal.SIGTERM)


#: The pid of the process that last forked (set just before the fork, so a child reads its parent's).
_forking_pid: list[int] = []


def _note_forking_pid() -> None:
    _forking_pid[:] = [os.getpid()]


def _after_fork_in_child() -> None:
    """In a child forked by the master (granian's workers): end with the master (:func:`watch_master`).

    A forked child inherits the master's Python signal handlers. granian's master handler only
    sets a flag of the master's loop, so in a worker that is still loading the app (its own handlers
    come after) a SIGTERM (systemd's, to the group) would be swallowed and the worker run on for
    ever: until its server installs its own, SIGTERM and SIGINT get their default action (the
    process ends; it serves nothing yet), as in a spawned worker. A process forked by a worker
    (not by the master) is left alone."""
    master = os.environ.get(MASTER_PID_ENV, "")
    if not master.isdigit() or _forking_pid != [int(master)]:
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        if callable(signal.getsignal(sig)):
            signal.signal(sig, signal.SIG_DFL)
    watch_master()


SERVERS = {"hypercorn": _serve_hypercorn, "uvicorn": _serve_uvicorn, "granian": _serve_granian}


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _workers(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of workers or `auto`, not {value!r}") from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="respan-gateway", description="A self-hostable LLM gateway (Respan API).",
        epilog="Plugins add commands (the auth plugin: `keys`); `respan-gateway check-config` lists them.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the gateway")
    p_serve.add_argument("--config", help="config file (default: $RESPAN_GATEWAY_CONFIG or config/gateway.toml)")
    p_serve.add_argument("--host")
    p_serve.add_argument("--port", type=int)
    p_serve.add_argument("--workers", type=_workers, help="worker processes, or `auto`: one per core available (affinity, cgroup CPU quota)")
    p_serve.add_argument("--server", choices=sorted(SERVERS), default="uvicorn",
                         help="the ASGI server (default uvicorn, the least CPU per request; hypercorn for HTTP/2; "
                              "granian needs its package installed)")
    p_serve.set_defaults(func=serve)
    p_check = sub.add_parser("check-config", help="validate a config file and the plugins it names")
    p_check.add_argument("file", nargs="?")
    p_check.set_defaults(func=check_config)
    try:
        args = parser.parse_args(_add_plugin_commands(sub, argv))
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"respan-gateway: config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
