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


def server_argv(server: str, port: int) -> list[str]:
    py = run.PYTHON
    if server == "hypercorn":
        return [py, "-m", "hypercorn", "-k", "uvloop", "-b", f"127.0.0.1:{port}", "--backlog", "4096", "floor_app:app"]
    if server == "uvicorn":
        return [py, "-m", "uvicorn", "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level",
                "warning", "--port", str(port), "floor_app:app"]
    return [py, "-m", "granian", "--interface", "asgi", "--loop", "uvloop", "--port", str(port), "--no-log", "floor_app:app"]


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
    parser.add_argument("--only", choices=["servers", "clients"])
    args = parser.parse_args()
    wrk = run.ensure_wrk(True)
    workdir = Path(tempfile.mkdtemp(prefix="respan-floor-"))
    print(f"floor: {run.machine()}; load average {run.loadavg()}", flush=True)
    started = time.monotonic()
    out = []
    if args.only in (None, "servers"):
        out += servers(args, wrk, workdir) + [""]
    if args.only in (None, "clients"):
        out += clients(args, workdir)
    print(f"\nmachine: {run.machine()}; load average at the end {run.loadavg()} ({time.monotonic() - started:.0f} s)")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
