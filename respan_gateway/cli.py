"""``respan-gateway``: serve the gateway, or check a config file.

    respan-gateway serve [--config FILE] [--host H] [--port P] [--workers N] [--server hypercorn|uvicorn|granian]
    respan-gateway check-config FILE
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys

from .config import Config, ConfigError, ServerSettings, find_config_file
from .gateway import Gateway


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
    return run(hc)


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
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"respan-gateway: config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
