"""The floor under the gateway's cost: what its parts cost alone, with no gateway code at all.

    python bench/floor.py                 # servers and clients, a few seconds each
    python bench/floor.py --only clients

- servers: a minimal pure-ASGI app (reads the body, answers a fixed 576-byte JSON) under hypercorn,
  uvicorn and granian, driven by wrk at c=64: server CPU per request from /proc;
- clients: 64 concurrent callers posting to the bench upstream through the gateway's upstream client
  (``respan_gateway.upstream``) on each transport, httpx2's httpcore pool and aiohttp, and through bare
  aiohttp: client process CPU per request.

A gateway request pays one server exchange and one client exchange, so these two floors added are
the least any gateway on these parts can cost; the gap to the gateway's figure is the gateway's own code.

``bench/run.py`` measures the floor of the stack in the same run as the gateway, as one process: the
proxy below (``PROXY``: the fastest server, a minimal ASGI app that posts the request body to the bench
upstream with bare aiohttp and answers with the upstream's bytes; no gateway code), driven by the same
load generator as the gateway. Its CPU per request is the reference of the budget's ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402

ANSWER = run.body_for("gpt-bench")  # any bytes; the size is what matters
APP = '''
BODY = b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-bench","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the bench upstream!","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":6,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_bench"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
'''


#: The floor of the stack: a server and the bare upstream client, no gateway code. The upstream's URL
#: comes from $FLOOR_UPSTREAM; one aiohttp session for the process, made on the first request (granian
#: and uvicorn both run the lifespan, but the session must belong to the serving loop either way).
PROXY = '''
import os
import aiohttp

URL = os.environ["FLOOR_UPSTREAM"]
HEADERS = [(b"content-type", b"application/json")]
STREAM_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8")]
session = None

async def app(scope, receive, send):
    global session
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.shutdown" and session is not None:
                await session.close()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if session is None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000), auto_decompress=False)
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    async with session.post(URL, data=body, headers={"content-type": "application/json"}) as r:
        if r.content_type == "text/event-stream":  # relayed as it comes: one read, one send
            await send({"type": "http.response.start", "status": r.status, "headers": STREAM_HEADERS})
            async for piece in r.content.iter_any():
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        answer = await r.read()
        status = r.status
    await send({"type": "http.response.start", "status": status,
                "headers": HEADERS + [(b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})
'''


def server_argv(server: str, port: int, module: str = "floor_app") -> list[str]:
    py = run.PYTHON
    if server == "hypercorn":
        return [py, "-m", "hypercorn", "-k", "uvloop", "-b", f"127.0.0.1:{port}", "--backlog", "4096", f"{module}:app"]
    if server == "uvicorn":
        return [py, "-m", "uvicorn", "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level",
                "warning", "--port", str(port), "--backlog", "4096", f"{module}:app"]
    return [py, "-m", "granian", "--interface", "asgi", "--loop", "uvloop", "--port", str(port), "--no-log",
            "--backlog", "4096", f"{module}:app"]


def start_proxy(server: str, workdir: Path, upstream_port: int, prefix: list[str] | None = None) -> tuple[run.Service, int]:
    """The floor of the stack under ``server``, started and answering; ``prefix`` (valgrind) goes before it."""
    (workdir / "floor_proxy.py").write_text(PROXY)
    port = run.free_port()
    env = {"FLOOR_UPSTREAM": f"http://127.0.0.1:{upstream_port}{run.UPSTREAM_PATH}", "PYTHONPATH": str(workdir)}
    service = run.Service(f"floor {server}", [*(prefix or []), *server_argv(server, port, "floor_proxy")], workdir,
                          workdir / f"floor-proxy-{server}.log", env=env)
    # A GET is posted on as an empty body: the upstream answers 404, which is an answer all the same.
    try:
        run.wait_http(f"http://127.0.0.1:{port}/", service, timeout=300 if prefix else 30)
    except BaseException:
        service.stop()
        raise
    return service, port


def stack_floor(servers: list[str], workdir: Path, upstream_port: int, duration: float, wrk: str | None) -> dict:
    """CPU per request of the floor of the stack under each installed server at c=64; the least is the floor."""
    figures: dict = {}
    for server in servers:
        if importlib.util.find_spec(server) is None:
            continue
        service, port = start_proxy(server, workdir, upstream_port)
        try:
            run.run_load(port, "/", ANSWER, None, 8, 1.0, wrk)  # warm-up: connections, imports
            before = service.cpu()
            r = run.checked(run.run_load(port, "/", ANSWER, None, 64, duration, wrk), f"floor {server}")
            figures[server] = {"cpu_ms_per_req": (service.cpu() - before) / max(r["requests"], 1) * 1e3, "rps": run.rps(r),
                               "p50_ms": r["p50"] / 1000}
        finally:
            service.stop()
    if not figures:
        raise SystemExit("bench: no server for the floor is installed (uvicorn or granian: make bench installs them)")
    best = min(figures, key=lambda s: figures[s]["cpu_ms_per_req"])
    return {"server": best, "cpu_ms_per_req": figures[best]["cpu_ms_per_req"], "by_server": figures}


def servers(args: argparse.Namespace, wrk: str | None, workdir: Path) -> list[str]:
    (workdir / "floor_app.py").write_text(APP)
    lines = []
    for server in args.servers.split(","):
        if importlib.util.find_spec(server) is None:
            lines.append(f"| {server} | not installed | | |")
            continue
        port = run.free_port()
        service = run.Service(server, server_argv(server, port), workdir, workdir / f"floor-{server}.log")
        try:
            run.wait_http(f"http://127.0.0.1:{port}/", service)
            run.run_load(port, "/", ANSWER, None, 8, 1.0, wrk)
            before = service.cpu()
            r = run.run_load(port, "/", ANSWER, None, 64, args.duration, wrk)
            cpu = (service.cpu() - before) / max(r["requests"], 1) * 1e3
            lines.append(f"| {server} | {run.rps(r):,.0f} | {r['p50'] / 1000:.2f} ms | {cpu:.3f} ms |")
            print(f"  .. server {server}: {cpu:.3f} ms CPU/req", flush=True)
        finally:
            service.stop()
    return ["| ASGI server (minimal app) | req/s at c=64 | p50 | server CPU per request |", "|---|---|---|---|", *lines]


CLIENT = '''
import asyncio, sys, time, resource
import uvloop
sys.path.insert(0, {root!r})
kind, url, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
BODY = {body!r}

async def main():
    if kind == "aiohttp":
        import aiohttp
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000), auto_decompress=False)
        async def one():
            async with session.post(url, data=BODY, headers={{"content-type": "application/json"}}) as r:
                await r.read()
        close = session.close
    else:
        from respan_gateway.config import UpstreamSettings
        from respan_gateway.upstream import create_client, timeout_for
        settings = UpstreamSettings(transport="aiohttp" if kind == "aiohttp-transport" else "httpx2")
        client, timeout, headers = create_client(settings), timeout_for(settings), {{"content-type": "application/json"}}
        async def one():
            r = await client.send("POST", url, headers, BODY, timeout)
            r.content
        close = client.aclose
    count = 0
    deadline = time.perf_counter() + seconds
    async def lane():
        nonlocal count
        while time.perf_counter() < deadline:
            await one()
            count += 1
    await asyncio.gather(*(lane() for _ in range(16)))  # warm-up: open the connections
    count = 0
    deadline = time.perf_counter() + seconds
    cpu = time.process_time()
    await asyncio.gather(*(lane() for _ in range(64)))
    cpu = time.process_time() - cpu
    await close()
    print(count, cpu)

uvloop.run(main())
'''


def clients(args: argparse.Namespace, workdir: Path) -> list[str]:
    up, port = run.start_upstream(workdir)
    script = workdir / "floor_client.py"
    script.write_text(CLIENT.format(root=str(run.ROOT), body=ANSWER))
    lines = []
    try:
        for kind in ("httpx2", "aiohttp-transport", "aiohttp"):
            argv = [run.PYTHON, str(script), kind, f"http://127.0.0.1:{port}/v1/chat/completions", str(args.duration)]
            done = subprocess.run(argv, capture_output=True, text=True, cwd=run.ROOT)
            if done.returncode != 0:
                lines.append(f"| {kind} | failed: {done.stderr.strip().splitlines()[-1:]} | |")
                continue
            count, cpu = done.stdout.split()
            per = float(cpu) / int(count) * 1e3
            label = {"httpx2": "gateway client, transport httpx2 (httpcore pool)", "aiohttp-transport": "gateway client, transport aiohttp",
                     "aiohttp": "bare aiohttp"}[kind]
            lines.append(f"| {label} | {int(count) / args.duration:,.0f} | {per:.3f} ms |")
            print(f"  .. client {label}: {per:.3f} ms CPU/req", flush=True)
    finally:
        up.stop()
    return ["| upstream client, 64 concurrent calls | req/s | client CPU per request |", "|---|---|---|", *lines]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--servers", default="hypercorn,uvicorn,granian")
    parser.add_argument("--only", choices=["servers", "clients", "stack"])
    args = parser.parse_args()
    wrk = run.ensure_wrk(True)
    workdir = Path(tempfile.mkdtemp(prefix="respan-floor-"))
    print(f"floor: {run.machine()}; load average {run.loadavg()}", flush=True)
    started = time.monotonic()
    out = []
    if args.only in (None, "servers"):
        out += servers(args, wrk, workdir) + [""]
    if args.only in (None, "clients"):
        out += clients(args, workdir) + [""]
    if args.only in (None, "stack"):
        up, port = run.start_upstream(workdir)
        try:
            stack = stack_floor(["uvicorn", "granian"], workdir, port, args.duration, wrk)
        finally:
            up.stop()
        out += ["| floor of the stack (server + bare aiohttp, no gateway code), c=64 | req/s | CPU per request |",
                "|---|---|---|"]
        out += [f"| {s} | {f['rps']:,.0f} | {f['cpu_ms_per_req']:.3f} ms |" for s, f in stack["by_server"].items()]
    print(f"\nmachine: {run.machine()}; load average at the end {run.loadavg()} ({time.monotonic() - started:.0f} s)")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
