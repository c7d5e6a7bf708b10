"""The benchmark: what the gateway adds to every call, against the bare upstream in the same run.

    python bench/run.py                  # every scenario, a few seconds each, short soak (about 2 min)
    python bench/run.py --full           # longer scenarios and the 10-minute soak
    python bench/run.py --only c1,c64    # some scenarios (upstream,c1,c8,c64,cache,stream,open,soak)
    python bench/run.py --matrix         # c1/c64 for every transport x server (docs/performance.md)

It starts ``bench/upstream.py`` (a fast fake OpenAI upstream) and the gateway (``respan-gateway serve``)
with every installed plugin's middleware on (the default pipeline), drives both with wrk (installed from
Debian's packages when missing and possible; else the asyncio generator in ``bench/loadgen.py``) and
prints a table with the budget verdicts of ``bench/README.md``. Figures are differences or ratios against
the direct upstream measured in the same run; the machine and its load are printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen  # noqa: E402

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = sys.executable
KEY = "sk-bench-gateway-key"
CHAT_PATH = "/api/chat/completions"
UPSTREAM_PATH = "/v1/chat/completions"
STREAM_CHUNKS, STREAM_GAP_MS = 50, 20
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

# The budget (bench/README.md).
BUDGET_ADDED_P50_MS = 0.5
BUDGET_CPU_MS_PER_REQ = 0.3
BUDGET_ADDED_TTFB_MS = 1.0
BUDGET_IDLE_RSS_MB = 100
BUDGET_KB_PER_STREAM = 100
# "Flat" on the soak: growth after warm-up within the larger of these.
SOAK_FLAT_MB, SOAK_FLAT_SHARE = 4.0, 0.03
# No burst: the share of chunks arriving in a burst is at most the direct run's plus this.
BURST_TOLERANCE = 0.02


def body_for(model: str, stream: bool = False, cached: bool = False) -> bytes:
    body: dict = {"model": model, "messages": [{"role": "user", "content": "Say hello to the benchmark"}]}
    if stream:
        body["stream"] = True
    if cached:  # the response cache's param: every request after the first is a hit
        body["cache_enabled"] = True
    return json.dumps(body, separators=(",", ":")).encode()


def prompt_body(size_kb: int) -> bytes:
    """A chat request whose user message makes the body about ``size_kb`` KB (words, as a prompt has)."""
    words = " ".join(f"word{i % 997}" for i in range(size_kb * 1024 // 8))
    body = {"model": "gpt-bench", "messages": [{"role": "user", "content": ""}]}
    empty = len(json.dumps(body, separators=(",", ":")))
    body["messages"][0]["content"] = words[: max(size_kb * 1024 - empty, 1)]
    return json.dumps(body, separators=(",", ":")).encode()


#: One request of every kind the gateway serves, against the bench upstream (path, body): the idle RSS
#: line counts what each kind loads on first need (a tokenizer, a translation, a codec).
FIRST_REQUESTS = (
    ("/api/chat/completions", {"model": "gpt-bench", "messages": [{"role": "user", "content": "Say hello"}]}),
    ("/api/chat/completions", {"model": "bench/stream-3-0", "stream": True,
                               "messages": [{"role": "user", "content": "Say hello"}]}),
    ("/api/embeddings", {"model": "bench/text-embedding-bench", "input": "Say hello"}),
    ("/api/responses", {"model": "gpt-bench", "input": "Say hello"}),
    ("/api/responses", {"model": "bench/stream-3-0", "input": "Say hello", "stream": True}),
    ("/api/anthropic/v1/messages", {"model": "gpt-bench", "max_tokens": 16,
                                    "messages": [{"role": "user", "content": "Say hello"}]}),
    ("/api/anthropic/v1/messages", {"model": "bench/stream-3-0", "max_tokens": 16, "stream": True,
                                    "messages": [{"role": "user", "content": "Say hello"}]}),
)


async def first_requests(host: str, port: int, key: str | None) -> list[str]:
    """Send FIRST_REQUESTS one by one; return the ones that did not answer 200 (``path: status``)."""
    failed = []
    for path, body in FIRST_REQUESTS:
        timing = loadgen.StreamTiming()
        payload = loadgen.request_bytes(host, port, path, json.dumps(body).encode(), key)
        reader, writer = await asyncio.open_connection(host, port)
        try:  # read_response reads a chunked stream to its end, whatever its events
            writer.write(payload)
            timing.status = await asyncio.wait_for(loadgen.read_response(reader), 30)
        except (OSError, asyncio.IncompleteReadError, ValueError, asyncio.TimeoutError) as exc:
            timing.error = f"{type(exc).__name__} {exc}"
        finally:
            writer.close()
        if timing.status != 200:
            failed.append(f"{path}{' (stream)' if body.get('stream') else ''}: {timing.error or timing.status}")
    return failed


# -- processes and /proc ------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(root: int) -> list[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[ppid].append(int(entry))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, ()))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / CLK_TCK


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_KB / 1024
    except OSError:
        return 0.0


class Service:
    """A process this bench started (in its own session), stopped by its own id at the end."""

    def __init__(self, name: str, argv: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.log = name, log
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True, env={**os.environ, **(env or {})})

    @property
    def pids(self) -> list[int]:
        return tree(self.proc.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pids)

    def worker_rss(self) -> float:
        """The largest process of the tree (a supervisor process is small; each worker is one process)."""
        return max((rss_mb(p) for p in self.pids), default=0.0)

    def total_rss(self) -> float:
        return sum(rss_mb(p) for p in self.pids)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-3000:]
        return ""


def wait_http(url: str, service: Service, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise SystemExit(f"bench: {service.name} exited at start-up:\n{service.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status < 500:
                    return
        except urllib.error.HTTPError as exc:  # an answer all the same
            if exc.code < 500:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"bench: {service.name} did not answer at {url} within {timeout:.0f}s:\n{service.tail()}")


def settle(service: Service, timeout: float = 30.0) -> None:
    """Wait until the started process is idle: start-up work (migrations, imports, a tokenizer loaded
    in a thread) would otherwise land in the first scenario's figures."""
    deadline = time.monotonic() + timeout
    before = service.cpu()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = service.cpu()
        if now - before < 0.02:
            return
        before = now


def start_upstream(workdir: Path) -> tuple[Service, int]:
    port = free_port()
    up = Service("upstream", [PYTHON, str(BENCH / "upstream.py"), "--port", str(port), "--chunks", str(STREAM_CHUNKS),
                              "--gap-ms", str(STREAM_GAP_MS)], workdir, workdir / "upstream.log")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return up, port
        if up.proc.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit(f"bench: the upstream did not start:\n{up.tail()}")


# -- the gateway's config, from the installed plugins ---------------------------------------------

def installed_plugins() -> list[str]:
    return sorted(ep.name for ep in importlib.metadata.entry_points(group="respan_gateway"))


def gateway_config(upstream_port: int, port: int, workers: int, transport: str | None,
                   disabled: list[str], extra: str) -> str:
    plugins = set(installed_plugins()) - set(disabled)
    parts = [f"""# Written by bench/run.py: every installed plugin's middleware on (the default pipeline).
[server]
host = "127.0.0.1"
port = {port}
workers = {workers}
backlog = 4096
graceful_timeout = 5.0

[plugins]
pipeline = []
disabled = {json.dumps(disabled)}
"""]
    if transport:
        parts.append(f'[upstream]\ntransport = "{transport}"\n')
    if "auth" in plugins:
        parts.append(f'[auth]\nkeys = [{{ key = "{KEY}", tenant = "bench", name = "bench" }}]\n')
    parts.append(f"""[providers.bench]
type = "openai_compatible"
base_url = "http://127.0.0.1:{upstream_port}/v1"
api_key = "sk-bench-upstream-key"

[models."gpt-bench"]
provider = "bench"
input_cost = 0.15
output_cost = 0.60
""")
    if extra:
        parts.append(extra)
    return "\n".join(parts)


def check_config(path: Path, workdir: Path) -> str:
    """``respan-gateway check-config``: fails by name on a plugin that needs settings; returns the pipeline."""
    exe = str(Path(PYTHON).with_name("respan-gateway"))
    done = subprocess.run([exe, "check-config", str(path)], cwd=workdir, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(
            f"bench: the generated gateway config does not load:\n{done.stderr or done.stdout}\n"
            "Give the plugin its settings with --extra-toml FILE, or leave it out with --disable NAME."
        )
    for line in done.stdout.splitlines():
        if line.strip().startswith("pipeline:"):
            return line.split(":", 1)[1].strip()
    return "?"


@dataclass
class Gateway:
    service: Service
    port: int
    pipeline: str
    server: str
    transport: str


def start_gateway(workdir: Path, upstream_port: int, args: argparse.Namespace, server: str | None,
                  transport: str | None, workers: int | None = None, prefix: list[str] | None = None) -> Gateway:
    """``respan-gateway serve`` on a generated config; ``server`` None is serve's own default (read back
    from its start-up line); ``prefix`` (valgrind) goes before the command."""
    port = free_port()
    workers = args.workers if workers is None else workers
    extra = Path(args.extra_toml).read_text() if args.extra_toml else ""
    name = f"{server or 'default'}-{transport or 'default'}-w{workers}"
    config = workdir / f"gateway-{name}.toml"
    config.write_text(gateway_config(upstream_port, port, workers, transport, args.disable, extra))
    # The gateway runs in the temp dir: a plugin's relative data paths (the SQLite log...) land there.
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    pipeline = check_config(config, data)
    exe = str(Path(PYTHON).with_name("respan-gateway"))
    argv = [*(prefix or []), exe, "serve", "--config", str(config), *(["--server", server] if server else [])]
    log = workdir / f"gateway-{name}.log"
    service = Service("gateway", argv, data, log)
    wait_http(f"http://127.0.0.1:{port}/healthz", service, timeout=180 if prefix else 30)
    settle(service)
    if server is None:  # "respan-gateway listening on http://... (1 worker(s), uvicorn, config ...)"
        line = next((x for x in log.read_text(errors="replace").splitlines() if "listening on" in x), "")
        server = f"{line.split('(', 1)[1].split(',')[1].strip() if '(' in line else '?'} (serve's default)"
    if transport is None:
        from respan_gateway.config import UpstreamSettings

        transport = f"{UpstreamSettings().transport} (default)"
    return Gateway(service, port, pipeline, server, transport)


# -- load ---------------------------------------------------------------------------------------

def ensure_wrk(allow_install: bool) -> str | None:
    path = shutil.which("wrk")
    if path or not allow_install:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("bench: installing wrk from Debian's packages ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], capture_output=True)
    return shutil.which("wrk")


def run_load(port: int, path: str, body: bytes, key: str | None, concurrency: int, duration: float,
             wrk: str | None) -> dict:
    if wrk:
        env = {**os.environ, "BENCH_BODY": body.decode(), "BENCH_KEY": key or ""}
        done = subprocess.run(
            [wrk, "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--timeout", "10s", "-s", str(BENCH / "post.lua"),
             f"http://127.0.0.1:{port}{path}"],
            capture_output=True, text=True, env=env,
        )
        for line in done.stdout.splitlines():
            if line.startswith("BENCH_JSON "):
                return json.loads(line[len("BENCH_JSON "):])
        raise SystemExit(f"bench: wrk failed:\n{done.stdout}\n{done.stderr}")
    return run_async(loadgen.closed_loop("127.0.0.1", port, path, body, key, concurrency, duration))


def run_async(coro):  # type: ignore[no-untyped-def]
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def rps(result: dict) -> float:
    return result["requests"] / (result["duration_us"] / 1e6)


def checked(result: dict, what: str) -> dict:
    bad = result["errors"] + result["status_errors"]
    if bad:
        print(f"bench: WARNING {what}: {bad} failed requests of {result['requests']}", flush=True)
    return result


# -- the table ----------------------------------------------------------------------------------

class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str, str]] = []
        self.verdicts: list[bool] = []

    def add(self, scenario: str, direct: str, gateway: str, figure: str, budget: str = "", ok: bool | None = None) -> None:
        verdict = "" if ok is None else ("PASS" if ok else "FAIL")
        if ok is not None:
            self.verdicts.append(ok)
        self.rows.append((scenario, direct, gateway, figure, budget, verdict))
        print(f"  .. {scenario}: {figure} {verdict}", flush=True)

    def render(self) -> str:
        head = ("scenario", "direct upstream", "through gateway", "figure", "budget", "verdict")
        rows = [head, *self.rows]
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
        sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return "\n".join([line(head), sep, *(line(r) for r in self.rows)])


def ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model or platform.processor()}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}"


def loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(open("/proc/loadavg").read().split()[:3])
    return "?"


# -- scenarios ----------------------------------------------------------------------------------

def scenario_upstream(table: Table, up: Service, up_port: int, args: argparse.Namespace, wrk: str | None, results: dict) -> None:
    before = up.cpu()
    r = checked(run_load(up_port, UPSTREAM_PATH, body_for("gpt-bench"), None, 64, args.duration, wrk), "upstream alone")
    cpu = (up.cpu() - before) / max(r["requests"], 1) * 1e3
    results["upstream_c64"] = {**r, "rps": rps(r), "cpu_ms_per_req": cpu}
    table.add("upstream alone, c=64", f"{rps(r):,.0f} req/s", "-", f"upstream CPU {cpu:.3f} ms/req")


def scenario_latency(table: Table, gw: Gateway, up_port: int, args: argparse.Namespace, wrk: str | None,
                     results: dict, concurrency: int) -> None:
    direct = checked(run_load(up_port, UPSTREAM_PATH, body_for("gpt-bench"), None, concurrency, args.duration, wrk),
                     f"direct c={concurrency}")
    before = gw.service.cpu()
    through = checked(run_load(gw.port, CHAT_PATH, body_for("gpt-bench"), KEY, concurrency, args.duration, wrk),
                      f"gateway c={concurrency}")
    cpu = (gw.service.cpu() - before) / max(through["requests"], 1) * 1e3
    results[f"c{concurrency}"] = {"direct": direct, "gateway": through, "gateway_cpu_ms_per_req": cpu,
                                  "direct_rps": rps(direct), "gateway_rps": rps(through)}
    name = f"c={concurrency}"
    if concurrency == 1:
        added = (through["p50"] - direct["p50"]) / 1000
        added99 = (through["p99"] - direct["p99"]) / 1000
        table.add(f"{name}: latency p50 / p99 (ms)", f"{ms(direct['p50'])} / {ms(direct['p99'])}",
                  f"{ms(through['p50'])} / {ms(through['p99'])}", f"added p50 {added:+.2f} ms, p99 {added99:+.2f} ms",
                  f"added p50 <= {BUDGET_ADDED_P50_MS} ms", added <= BUDGET_ADDED_P50_MS)
        results["c1"]["added_p50_ms"] = added
    else:
        table.add(f"{name}: req/s, p50 / p99 (ms)", f"{rps(direct):,.0f}, {ms(direct['p50'])} / {ms(direct['p99'])}",
                  f"{rps(through):,.0f}, {ms(through['p50'])} / {ms(through['p99'])}",
                  f"{rps(through) / rps(direct):.1%} of direct req/s")
    budget = f"<= {BUDGET_CPU_MS_PER_REQ} ms/req" if concurrency == 64 else ""
    table.add(f"{name}: gateway CPU", "-", f"{cpu:.3f} s / 1k req", f"{cpu:.3f} ms/req",
              budget, cpu <= BUDGET_CPU_MS_PER_REQ if concurrency == 64 else None)


def scenario_cache(table: Table, gw: Gateway, args: argparse.Namespace, wrk: str | None, results: dict) -> None:
    """Cache hits: the same request with ``cache_enabled``, stored by a first request, then answered
    from the cache (no upstream call): c=1 latency and c=64 gateway CPU per hit."""
    if "cache" not in gw.pipeline.replace(",", " ").split():
        table.add("cache hit", "-", "-", "skipped: the `cache` plugin is not in the pipeline")
        return
    body = body_for("gpt-bench", cached=True)
    run_load(gw.port, CHAT_PATH, body, KEY, 1, 1.0, wrk)  # stores the entry, and warms the path
    one = checked(run_load(gw.port, CHAT_PATH, body, KEY, 1, args.duration, wrk), "cache hits c=1")
    before = gw.service.cpu()
    many = checked(run_load(gw.port, CHAT_PATH, body, KEY, 64, args.duration, wrk), "cache hits c=64")
    cpu = (gw.service.cpu() - before) / max(many["requests"], 1) * 1e3
    results["cache_hit"] = {"c1": one, "c64": many, "gateway_cpu_ms_per_hit": cpu, "rps": rps(many)}
    table.add("cache hit, c=1: latency p50 / p99 (ms)", "-", f"{ms(one['p50'])} / {ms(one['p99'])}",
              "no upstream call")
    proxied = results.get("c64", {}).get("gateway_cpu_ms_per_req")
    versus = f" (a proxied request: {proxied:.3f})" if proxied is not None else ""
    table.add("cache hit, c=64: req/s; gateway CPU", "-", f"{rps(many):,.0f} req/s", f"{cpu:.3f} ms/hit{versus}")


def scenario_stream(table: Table, gw: Gateway, up_port: int, args: argparse.Namespace, results: dict) -> None:
    model = f"stream-{STREAM_CHUNKS}-{STREAM_GAP_MS}"
    gap = STREAM_GAP_MS / 1000
    duration = max(args.duration, 3 * STREAM_CHUNKS * gap)
    conc = 8
    stagger = STREAM_CHUNKS * gap / conc
    # Warm-up: open the connections (client and upstream side) before anything is timed.
    run_async(loadgen.streams_for("127.0.0.1", gw.port, CHAT_PATH, body_for("bench/stream-3-0", True), KEY, conc, 0.5))
    direct = loadgen.stream_stats(run_async(loadgen.streams_for(
        "127.0.0.1", up_port, UPSTREAM_PATH, body_for(model, True), None, conc, duration, stagger)), gap)
    through = loadgen.stream_stats(run_async(loadgen.streams_for(
        "127.0.0.1", gw.port, CHAT_PATH, body_for(f"bench/{model}", True), KEY, conc, duration, stagger)), gap)
    results["stream"] = {"direct": direct, "gateway": through}
    for label, s in (("direct", direct), ("gateway", through)):
        if s["complete"] < s["streams"]:
            print(f"bench: WARNING {label} streams: {s['streams'] - s['complete']} incomplete: {s['errors']}", flush=True)
    added = through["ttfb_p50_ms"] - direct["ttfb_p50_ms"]
    results["stream"]["added_ttfb_ms"] = added
    table.add(f"stream {STREAM_CHUNKS}x{STREAM_GAP_MS} ms, c={conc}: TTFB p50 / p99 (ms)",
              f"{direct['ttfb_p50_ms']:.2f} / {direct['ttfb_p99_ms']:.2f}",
              f"{through['ttfb_p50_ms']:.2f} / {through['ttfb_p99_ms']:.2f}",
              f"added TTFB p50 {added:+.2f} ms", f"<= {BUDGET_ADDED_TTFB_MS} ms", added <= BUDGET_ADDED_TTFB_MS)
    no_burst = (through["burst_share"] <= direct["burst_share"] + BURST_TOLERANCE
                and through["events_per_stream"] >= direct["events_per_stream"] - 0.5)
    table.add("stream: chunk gaps p50, burst share",
              f"{direct['gap_p50_ms']:.1f} ms, {direct['burst_share']:.1%}",
              f"{through['gap_p50_ms']:.1f} ms, {through['burst_share']:.1%}",
              f"{through['events_per_stream']:.0f} events/stream, one by one" if no_burst else "chunks bunched",
              "no burst", no_burst)


def scenario_open_streams(table: Table, gw: Gateway, args: argparse.Namespace, results: dict) -> None:
    n = args.streams
    idle = gw.service.worker_rss()
    idle_total = gw.service.total_rss()
    table.add("idle RSS per worker", "-", f"{idle:.1f} MB", f"{idle:.1f} MB", f"<= {BUDGET_IDLE_RSS_MB} MB",
              idle <= BUDGET_IDLE_RSS_MB)
    # Long, slow streams: all n are open together while RSS is sampled.
    chunks, gap_ms = 30, 500
    payload = loadgen.request_bytes("127.0.0.1", gw.port, CHAT_PATH, body_for(f"bench/stream-{chunks}-{gap_ms}", True), KEY)

    async def hold_open() -> tuple[float, int, list[loadgen.StreamTiming]]:
        timings = [loadgen.StreamTiming() for _ in range(n)]
        firsts = [asyncio.Event() for _ in range(n)]
        sem = asyncio.Semaphore(200)  # open connections in waves, not 1000 SYNs at once

        async def one(i: int) -> None:
            async with sem:
                task = asyncio.ensure_future(loadgen.one_stream("127.0.0.1", gw.port, payload, timings[i], firsts[i]))
                waiter = asyncio.ensure_future(firsts[i].wait())
                await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
            await task

        tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
        deadline = time.monotonic() + chunks * gap_ms / 1000 * 0.6
        while time.monotonic() < deadline and sum(e.is_set() for e in firsts) < n:
            await asyncio.sleep(0.1)
        opened = sum(e.is_set() for e in firsts)
        peak = 0.0
        for _ in range(10):  # sample while every stream is open
            peak = max(peak, gw.service.total_rss())
            await asyncio.sleep(0.1)
        await asyncio.gather(*tasks)
        return peak, opened, timings

    peak, opened, timings = run_async(hold_open())
    complete = sum(t.complete for t in timings)
    per_stream_kb = (peak - idle_total) * 1024 / max(opened, 1)
    results["open_streams"] = {"streams": n, "opened_together": opened, "complete": complete,
                               "idle_rss_mb": idle, "idle_total_rss_mb": idle_total, "during_rss_mb": peak,
                               "kb_per_stream": per_stream_kb}
    if complete < n:
        errors = [t.error or f"status {t.status}" for t in timings if not t.complete][:3]
        print(f"bench: WARNING open streams: {n - complete} of {n} incomplete: {errors}", flush=True)
    table.add(f"{n} open streams: RSS before -> during", "-", f"{idle_total:.1f} -> {peak:.1f} MB",
              f"{per_stream_kb:.1f} KB/stream ({opened} open together, {complete} complete)",
              f"<= {BUDGET_KB_PER_STREAM} KB", per_stream_kb <= BUDGET_KB_PER_STREAM and complete == n)


def scenario_soak(table: Table, gw: Gateway, args: argparse.Namespace, wrk: str | None, results: dict) -> None:
    seconds = args.soak
    samples: list[tuple[float, float]] = []
    if wrk:
        env = {**os.environ, "BENCH_BODY": body_for("gpt-bench").decode(), "BENCH_KEY": KEY}
        load = subprocess.Popen([wrk, "-t1", "-c8", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(BENCH / "post.lua"),
                                 f"http://127.0.0.1:{gw.port}{CHAT_PATH}"], stdout=subprocess.PIPE, text=True, env=env)
    else:
        load = subprocess.Popen([PYTHON, "-c", (
            "import sys,asyncio,json; sys.path.insert(0, %r); import loadgen; "
            "r=asyncio.run(loadgen.closed_loop('127.0.0.1', %d, %r, %r, %r, 8, %d)); print('BENCH_JSON', json.dumps(r))"
        ) % (str(BENCH), gw.port, CHAT_PATH, body_for("gpt-bench"), KEY, seconds)], stdout=subprocess.PIPE, text=True)
    started = time.monotonic()
    while load.poll() is None:
        samples.append((time.monotonic() - started, gw.service.total_rss()))
        time.sleep(min(1.0, max(seconds / 60, 0.25)))
    out = load.communicate()[0]
    line = next((x for x in out.splitlines() if x.startswith("BENCH_JSON ")), None)
    r = json.loads(line[len("BENCH_JSON "):]) if line else {"requests": 0, "duration_us": 1, "errors": 0, "status_errors": 0}
    checked(r, "soak")
    # Warm-up is the first fifth; "flat" compares the RSS just after it with the end.
    warm = [v for t, v in samples if seconds * 0.2 <= t <= seconds * 0.3] or [samples[0][1]]
    end = [v for t, v in samples if t >= seconds * 0.9] or [samples[-1][1]]
    start_mb, end_mb = sorted(warm)[len(warm) // 2], sorted(end)[len(end) // 2]
    growth = end_mb - start_mb
    allowed = max(SOAK_FLAT_MB, start_mb * SOAK_FLAT_SHARE)
    results["soak"] = {"seconds": seconds, "requests": r["requests"], "rss_after_warmup_mb": start_mb,
                       "rss_end_mb": end_mb, "growth_mb": growth, "samples": samples}
    table.add(f"soak {seconds:.0f} s at c=8 ({r['requests']:,} req): RSS", "-", f"{start_mb:.1f} -> {end_mb:.1f} MB",
              f"{growth:+.1f} MB after warm-up", f"flat (<= +{allowed:.0f} MB)", growth <= allowed)


def profile(gw: Gateway, up_port: int, args: argparse.Namespace, wrk: str | None, workdir: Path) -> str:
    """py-spy on the busiest gateway process during a c=64 run; the cost by package and by function."""
    spy = shutil.which("py-spy") or str(Path(PYTHON).with_name("py-spy"))
    if not Path(spy).exists() and not shutil.which("py-spy"):
        return "profile: py-spy is not installed (pip install py-spy)"
    # The worker is the process that burns CPU under load.
    load = subprocess.Popen([wrk or "true", "-t1", "-c64", f"-d{round(args.duration) + 2}s", "-s", str(BENCH / "post.lua"),
                             f"http://127.0.0.1:{gw.port}{CHAT_PATH}"], stdout=subprocess.DEVNULL,
                            env={**os.environ, "BENCH_BODY": body_for("gpt-bench").decode(), "BENCH_KEY": KEY})
    time.sleep(1)
    before = {p: cpu_seconds([p]) for p in gw.service.pids}
    time.sleep(0.5)
    pid = max(before, key=lambda p: cpu_seconds([p]) - before[p])
    out = workdir / "profile.txt"
    subprocess.run([spy, "record", "-p", str(pid), "-d", str(max(int(args.duration), 2)), "-r", "200", "--gil", "-f", "raw",
                    "-o", str(out)], capture_output=True)
    load.wait()
    if not out.exists():
        return "profile: py-spy could not attach (ptrace not permitted?)"
    by_package: collections.Counter[str] = collections.Counter()
    by_function: collections.Counter[str] = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        leaf = stack.split(";")[-1]
        by_function[leaf] += n
        by_package[_package_of(leaf)] += n
    lines = [f"profile of pid {pid} under c=64 ({total} samples, self time by package):"]
    lines += [f"  {100 * n / total:5.1f}%  {p}" for p, n in by_package.most_common(12)]
    lines.append("top functions (self time):")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in by_function.most_common(12)]
    return "\n".join(lines)


def _package_of(frame: str) -> str:
    """``func (aiohttp/http_writer.py:116)`` -> ``aiohttp``; the project's plugins by name; stdlib marked."""
    path = frame[frame.rfind("(") + 1:].rsplit(":", 1)[0]
    parts = Path(path).parts
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1:]
    if "plugins" in parts and parts.index("plugins") + 1 < len(parts) - 1:
        return "plugin " + parts[parts.index("plugins") + 1]
    if "respan_gateway" in parts:
        return "respan_gateway (core)"
    top = parts[0] if parts else path
    top = top[:-3] if top.endswith(".py") else top
    if top.startswith("<frozen") or top in sys.stdlib_module_names:
        return f"stdlib {top.removeprefix('<frozen ').rstrip('>')}"
    return top


# -- main ---------------------------------------------------------------------------------------

SCENARIOS = ("upstream", "c1", "c8", "c64", "cache", "stream", "open", "soak")


def run_all(args: argparse.Namespace, workdir: Path, wrk: str | None) -> dict:
    only = set(args.only.split(",")) if args.only else set(SCENARIOS)
    up, up_port = start_upstream(workdir)
    results: dict = {"machine": machine(), "loadavg_start": loadavg(), "load_generator": wrk or "asyncio (bench/loadgen.py)"}
    table = Table()
    try:
        gw = start_gateway(workdir, up_port, args, args.server, args.transport)
        try:
            results.update(pipeline=gw.pipeline, server=gw.server, transport=gw.transport, workers=args.workers)
            print(f"bench: gateway pipeline [{gw.pipeline}], server {gw.server}, transport {gw.transport}, "
                  f"{args.workers} worker(s); load generator {results['load_generator']}", flush=True)
            run_load(gw.port, CHAT_PATH, body_for("gpt-bench"), KEY, 8, 1.0, wrk)  # warm-up
            if "upstream" in only:
                scenario_upstream(table, up, up_port, args, wrk, results)
            for c in (1, 8, 64):
                if f"c{c}" in only:
                    scenario_latency(table, gw, up_port, args, wrk, results, c)
            if "cache" in only:
                scenario_cache(table, gw, args, wrk, results)
            if "stream" in only:
                scenario_stream(table, gw, up_port, args, results)
            if "open" in only:
                scenario_open_streams(table, gw, args, results)
            if "soak" in only:
                scenario_soak(table, gw, args, wrk, results)
            if args.profile:
                results["profile"] = profile(gw, up_port, args, wrk, workdir)
        finally:
            gw.service.stop()
    finally:
        up.stop()
    results["loadavg_end"] = loadavg()
    results["table"] = table.render()
    results["all_pass"] = all(table.verdicts)
    return results


def run_matrix(args: argparse.Namespace, workdir: Path, wrk: str | None) -> dict:
    """c=1 and c=64 for each transport x server: the figures behind the defaults (docs/performance.md)."""
    up, up_port = start_upstream(workdir)
    rows = []
    try:
        for server in args.servers.split(","):
            for transport in args.transports.split(","):
                gw = start_gateway(workdir, up_port, args, server, transport)
                try:
                    run_load(gw.port, CHAT_PATH, body_for("gpt-bench"), KEY, 8, 1.0, wrk)
                    row = {"server": server, "transport": transport}
                    for c in (1, 64):
                        direct = run_load(up_port, UPSTREAM_PATH, body_for("gpt-bench"), None, c, args.duration, wrk)
                        before = gw.service.cpu()
                        through = checked(run_load(gw.port, CHAT_PATH, body_for("gpt-bench"), KEY, c, args.duration, wrk),
                                          f"{server}/{transport} c={c}")
                        cpu = (gw.service.cpu() - before) / max(through["requests"], 1) * 1e3
                        row[f"c{c}"] = {"added_p50_ms": (through["p50"] - direct["p50"]) / 1000,
                                        "p99_ms": through["p99"] / 1000, "rps": rps(through), "cpu_ms_per_req": cpu}
                    row["idle_rss_mb"] = gw.service.worker_rss()
                    rows.append(row)
                    print(f"  .. {server:9} {transport:7} c1 added p50 {row['c1']['added_p50_ms']:.2f} ms, "
                          f"cpu {row['c1']['cpu_ms_per_req']:.3f} ms/req | c64 {row['c64']['rps']:,.0f} req/s, "
                          f"p99 {row['c64']['p99_ms']:.1f} ms, cpu {row['c64']['cpu_ms_per_req']:.3f} ms/req", flush=True)
                finally:
                    gw.service.stop()
    finally:
        up.stop()
    head = "| server | transport | c=1 added p50 | c=1 CPU/req | c=64 req/s | c=64 p99 | c=64 CPU/req | RSS |\n|---|---|---|---|---|---|---|---|"
    lines = [head] + [
        f"| {r['server']} | {r['transport']} | {r['c1']['added_p50_ms']:.2f} ms | {r['c1']['cpu_ms_per_req']:.3f} ms | "
        f"{r['c64']['rps']:,.0f} | {r['c64']['p99_ms']:.1f} ms | {r['c64']['cpu_ms_per_req']:.3f} ms | {r['idle_rss_mb']:.0f} MB |"
        for r in rows
    ]
    return {"machine": machine(), "loadavg_end": loadavg(), "matrix": rows, "table": "\n".join(lines)}


def main() -> int:
    parser = argparse.ArgumentParser(description="respan-gateway benchmark (see bench/README.md)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per load scenario (default 4)")
    parser.add_argument("--soak", type=float, default=30.0, help="soak seconds (default 30; --full: 600)")
    parser.add_argument("--full", action="store_true", help="the full set: 15 s scenarios and the 10-minute soak")
    parser.add_argument("--only", help=f"comma-separated scenarios of {','.join(SCENARIOS)}")
    parser.add_argument("--streams", type=int, default=1000, help="open streams held together (default 1000)")
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes (default 1)")
    parser.add_argument("--server", default="hypercorn", help="hypercorn (default), uvicorn or granian")
    parser.add_argument("--transport", help="[upstream] transport (default: the gateway's default)")
    parser.add_argument("--disable", type=lambda s: [x for x in s.split(",") if x], default=[],
                        help="plugins to leave out (comma-separated)")
    parser.add_argument("--extra-toml", help="a TOML file appended to the generated gateway config")
    parser.add_argument("--profile", action="store_true", help="py-spy profile of the gateway under c=64")
    parser.add_argument("--matrix", action="store_true", help="compare transports x servers at c=1 and c=64")
    parser.add_argument("--servers", default="hypercorn,uvicorn,granian")
    parser.add_argument("--transports", default="httpx2,aiohttp")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install wrk")
    parser.add_argument("--asyncio-load", action="store_true", help="use bench/loadgen.py even if wrk is there")
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs, SQLite, profile)")
    args = parser.parse_args()
    if args.full:
        args.duration = max(args.duration, 15.0)
        args.soak = max(args.soak, 600.0)
    wrk = None if args.asyncio_load else ensure_wrk(not args.no_install)
    if wrk is None:
        print("bench: wrk not found; using the asyncio load generator (bench/loadgen.py)", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="respan-bench-"))
    print(f"bench: {machine()}; load average {loadavg()}; work dir {workdir}", flush=True)
    try:
        results = run_matrix(args, workdir, wrk) if args.matrix else run_all(args, workdir, wrk)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"machine: {results['machine']}; load average at the end {results['loadavg_end']}")
    if not args.matrix:
        print(f"gateway: {results['server']}, transport {results['transport']}, {results['workers']} worker(s), "
              f"pipeline [{results['pipeline']}]; load generator {results['load_generator']}")
    print(results["table"])
    if results.get("profile"):
        print()
        print(results["profile"])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    if not args.matrix:
        print(f"\nbudget: {'every line passes' if results['all_pass'] else 'some lines FAIL (see bench/README.md)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
