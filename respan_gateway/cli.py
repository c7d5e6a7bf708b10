"""``respan-gateway``: serve the gateway, or check a config file.

    respan-gateway serve [--config FILE] [--host H] [--port P] [--workers N] [--server hypercorn|uvicorn|granian]
    respan-gateway check-config FILE
    respan-gateway <plugin command> ...        (e.g. `prompts check DIR`, from the plugins' register_commands)

With several workers, SIGTERM may reach the master only (``kill``), or every process of the group
(systemd's default): either way every worker stops accepting, finishes its streams and writes its
log records. A worker whose master is gone (killed) shuts down the same way (see
:func:`watch_master`), so no worker outlives its server.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import importlib.util
import os
import signal
import sys
from multiprocessing.connection import wait
from typing import Any

from .config import Config, ConfigError, ServerSettings, find_config_file
from .gateway import Gateway, plugin_commands


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
    return 0


def serve(args: argparse.Namespace) -> int:
    path = find_config_file(args.config)
    config, _ = _build(str(path))  # fail fast, by name, before any worker starts
    server = config.server
    host = args.host or server.host
    port = args.port if args.port is not None else server.port
    workers = args.workers if args.workers is not None else server.workers

    if importlib.util.find_spec(args.server) is None:
        raise ConfigError(f"--server {args.server}: the package `{args.server}` is not installed (pip install {args.server})")
    os.environ["RESPAN_GATEWAY_CONFIG"] = str(path.resolve())
    os.environ[MASTER_PID_ENV] = str(os.getpid())  # read by the workers: see watch_master()
    # Spawned workers call watch_master() when they import the app; forked ones (granian) here.
    os.register_at_fork(after_in_child=watch_master)
    # SIGHUP reloads (Gateway.reload) once a worker is up; until then (and in the master) it must not
    # end the process, its default. Ignored signals stay ignored in the workers until they handle it.
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    print(f"respan-gateway listening on http://{host}:{port} ({max(workers, 1)} worker(s), {args.server}, config {path})", flush=True)
    return SERVERS[args.server](server, host, port, workers)


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
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited until the worker installs its handlers
    processes = [ctx.Process(target=_hypercorn_worker, kwargs={"config": hc, "sockets": sockets, "stop": stop})
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
    # Optional server (pip install uvicorn httptools): less CPU per request than hypercorn, see
    # docs/performance.md. It reports client disconnects as `http.disconnect`, as streams need.
    import uvicorn

    # uvicorn re-raises SIGTERM/SIGINT once it has drained; end with 0 then, as hypercorn does.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    uvicorn.run(
        "respan_gateway.asgi:app", host=host, port=port, workers=max(workers, 1),
        loop="uvloop" if _has_uvloop() else "asyncio", http="auto", lifespan="on", access_log=False,
        backlog=server.backlog, timeout_keep_alive=int(server.keep_alive_timeout),
        timeout_graceful_shutdown=int(server.graceful_timeout), log_level="warning",
    )
    return 0


def _serve_granian(server: ServerSettings, host: str, port: int, workers: int) -> int:
    # Optional server (pip install granian): Rust HTTP stack, see docs/performance.md.
    from granian.server import Server

    Server(
        "respan_gateway.asgi:app", address=host, port=port, interface="asgi", workers=max(workers, 1),
        loop="uvloop" if _has_uvloop() else "asyncio", log_access=False, backlog=server.backlog,
        workers_kill_timeout=int(server.graceful_timeout) or None,
    ).serve()
    return 0


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


MASTER_PID_ENV = "RESPAN_GATEWAY_MASTER_PID"
_PR_SET_PDEATHSIG = 1


def watch_master() -> None:
    """In a worker process of ``serve``: get SIGTERM (a graceful shutdown) when the master dies.

    Linux's ``PR_SET_PDEATHSIG`` covers a master killed with SIGKILL; a master already gone before
    it was set is caught by comparing the parent's pid. Elsewhere (or outside ``serve``) nothing."""
    master = os.environ.get(MASTER_PID_ENV)
    if not master or not master.isdigit() or int(master) == os.getpid() or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(master):
        os.kill(os.getpid(), signal.SIGTERM)


SERVERS = {"hypercorn": _serve_hypercorn, "uvicorn": _serve_uvicorn, "granian": _serve_granian}


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="respan-gateway", description="A self-hostable LLM gateway (Respan API).")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the gateway")
    p_serve.add_argument("--config", help="config file (default: $RESPAN_GATEWAY_CONFIG or config/gateway.toml)")
    p_serve.add_argument("--host")
    p_serve.add_argument("--port", type=int)
    p_serve.add_argument("--workers", type=int)
    p_serve.add_argument("--server", choices=sorted(SERVERS), default="hypercorn",
                         help="the ASGI server (default hypercorn; uvicorn and granian need their package installed)")
    p_serve.set_defaults(func=serve)
    p_check = sub.add_parser("check-config", help="validate a config file and the plugins it names")
    p_check.add_argument("file", nargs="?")
    p_check.set_defaults(func=check_config)
    core = ("serve", "check-config")
    given = sys.argv[1:] if argv is None else argv
    try:
        # Plugin commands load every plugin: only when the command is not the core's own.
        if not given or given[0] not in core:
            for command in plugin_commands(core):
                p_plugin = sub.add_parser(command.name, help=command.help)
                command.configure(p_plugin)
                p_plugin.set_defaults(func=command.run)
    except ConfigError as exc:
        print(f"respan-gateway: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"respan-gateway: config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
