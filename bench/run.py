"""The benchmark: what the gateway adds to every call, judged by the budget of issue 17 (bench/README.md).

    python bench/run.py                  # every scenario, a few seconds each, short soak (about 3-4 min)
    python bench/run.py --full           # longer scenarios, streams held 60 s, the 10-minute soak
    python bench/run.py --check          # short run + instructions per request, against bench/figures.json
    python bench/run.py --only c1,c64    # some scenarios (see SCENARIOS)
    python bench/run.py --matrix         # c1/c64 for every transport x server (docs/performance.md)

It starts ``bench/upstream.py`` (a fast fake upstream), measures the floor of the stack
(``bench/floor.py``: the fastest server + bare aiohttp, no gateway code) and then the gateway
(``respan-gateway serve`` on serve's default server, with every installed plugin's middleware on: the
default pipeline), drives them with wrk (installed from Debian's packages when missing and possible;
else the asyncio generator in ``bench/loadgen.py``) and prints the measurements, the budget lines with
their verdicts and the growth scenarios. Every budget line is a ratio or a difference against a
reference measured in the same run (the floor, or the direct upstream); the machine and its load are
printed with them.
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
STREAM_CHUNKS, STREAM_GAP_MS, STREAM_CONCURRENCY = 50, 20, 8
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

# The budget (issue 17, bench/README.md): every line a ratio or a difference against a reference
# measured in the same run (the floor of the stack, or the direct upstream).
BUDGET_CPU_X_FLOOR = 2.5  # gateway CPU per request at c=64, against the floor's
BUDGET_ADDED_P50_X_FLOOR = 2.0  # added p50 at c=1 (gateway minus direct), against the floor's CPU per request
BUDGET_TTFB_X_ADDED = 1.5  # added time to first byte on streams, against the c=1 added latency
BUDGET_CHUNK_SHARE = 0.05  # gateway CPU per relayed chunk, against the CPU of one request (c=64)
BUDGET_IDLE_RSS_MB = 70  # per worker, after the first request of every kind
BUDGET_KB_PER_STREAM = 50  # memory per open stream, 1,000 held together
BUDGET_BIG_PROMPT_X = 1.5  # CPU per request with a 200 KB prompt, against a 1 KB prompt
BUDGET_CACHE_X_FLOOR = 1.2  # gateway CPU per cache hit at c=64, against the floor's per request
# "Flat" on the soak: growth after warm-up within the larger of these.
SOAK_FLAT_MB, SOAK_FLAT_SHARE = 4.0, 0.03
# "Flat" while streams are held open: the RSS at the end of the hold within the larger of these of the
# RSS once all were open (the memory of the open streams themselves is the share's base).
HOLD_FLAT_MB, HOLD_FLAT_SHARE = 1.0, 0.10
# No burst: the share of chunks arriving in a burst is at most the direct run's plus this.
BURST_TOLERANCE = 0.02
# Chunk cost: streams of CHUNK_LONG chunks against streams of 2 (role and finish), CHUNK_GAP_MS apart.
CHUNK_LONG, CHUNK_GAP_MS, CHUNK_CONCURRENCY = 102, 2, 16
PROMPT_SIZES_KB = (1, 50, 200)
# --check: a figure more than this much worse than bench/figures.json fails.
CHECK_TOLERANCE = 0.20


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


def settle(service: Service, timeout: float = 30.0) -> bool:
    """Wait until the started process is idle: start-up work (migrations, imports, a tokenizer loaded
    in a thread) would otherwise land in the first scenario's figures. False when it never was."""
    deadline = time.monotonic() + timeout
    before = service.cpu()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = service.cpu()
        if now - before < 0.02:
            return True
        before = now
    return False


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
    up.stop()
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
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", service, timeout=300 if prefix else 30)
        settle(service)
    except BaseException:
        service.stop()
        raise
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
        with tempfile.NamedTemporaryFile(prefix="respan-bench-body-", suffix=".json") as body_file:
            body_file.write(body)
            body_file.flush()
            env = {**os.environ, "BENCH_BODY_FILE": body_file.name, "BENCH_KEY": key or ""}
            done = subprocess.run(
                [wrk, "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--timeout", "10s", "-s",
                 str(BENCH / "post.lua"), f"http://127.0.0.1:{port}{path}"],
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
    HEAD = ("scenario", "direct upstream", "through gateway", "figure", "budget", "verdict")

    def __init__(self, head: tuple[str, ...] | None = None) -> None:
        self.head = head or self.HEAD
        self.rows: list[tuple[str, ...]] = []
        self.verdicts: list[bool] = []

    def add(self, scenario: str, direct: str, gateway: str, figure: str, budget: str = "", ok: bool | None = None) -> None:
        verdict = "" if ok is None else ("PASS" if ok else "FAIL")
        if ok is not None:
            self.verdicts.append(ok)
        self.rows.append((scenario, direct, gateway, figure, budget, verdict))
        print(f"  .. {scenario}: {figure} {verdict}", flush=True)

    def render(self) -> str:
        rows = [self.head, *self.rows]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self.head))]
        line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
        sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return "\n".join([line(self.head), sep, *(line(r) for r in self.rows)])


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
# Each adds its measurements to ``table`` and its budget line (issue 17) to ``budget``; a budget line
# whose reference did not run (``--only``) is printed without a verdict.

def figure(results: dict, *keys: str) -> float | None:
    """``results[k1][k2]...`` or None when a scenario did not run."""
    value: object = results
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value  # type: ignore[return-value]


def scenario_upstream(table: Table, up: Service, up_port: int, args: argparse.Namespace, wrk: str | None, results: dict) -> None:
    before = up.cpu()
    r = checked(run_load(up_port, UPSTREAM_PATH, body_for("gpt-bench"), None, 64, args.duration, wrk), "upstream alone")
    cpu = (up.cpu() - before) / max(r["requests"], 1) * 1e3
    results["upstream_c64"] = {**r, "rps": rps(r), "cpu_ms_per_req": cpu}
    table.add("upstream alone, c=64", f"{rps(r):,.0f} req/s", "-", f"upstream CPU {cpu:.3f} ms/req")


def scenario_floor(table: Table, up_port: int, args: argparse.Namespace, wrk: str | None, workdir: Path,
                   results: dict, paths: bool) -> None:
    """The floor of the stack (bench/floor.py): the fastest server + bare aiohttp, no gateway code, c=64.
    With ``paths``, the floor under that server also on the paths the budget judges against another
    reference (shown beside the gateway's, not judged): its added p50 at c=1, its added time to first
    byte on the stream scenario's streams, its CPU per relayed chunk (its proxy sends each read of the
    upstream's stream as it comes): what the stack costs there before any gateway code."""
    import floor  # bench/floor.py imports this module: here, not at the top

    f = floor.stack_floor(args.floor_servers.split(","), workdir, up_port, args.duration, wrk)
    results["floor"] = f
    for server, x in f["by_server"].items():
        table.add(f"floor of the stack, {server} + bare aiohttp, c=64", "-", f"{x['rps']:,.0f} req/s",
                  f"{x['cpu_ms_per_req']:.3f} ms CPU/req{' (the floor)' if server == f['server'] else ''}")
    if not paths:
        return
    # Under the gateway's own server where the floor has it (the servers' latency differs: granian
    # hands each request between threads), else the floor's.
    server = args.server or "uvicorn"
    server = server if server in f["by_server"] else f["server"]
    service, port = floor.start_proxy(server, workdir, up_port)
    try:
        body = body_for("gpt-bench")
        run_load(port, CHAT_PATH, body, None, 8, 1.0, wrk)  # warm-up
        direct = checked(run_load(up_port, UPSTREAM_PATH, body, None, 1, args.duration, wrk), "direct c=1")
        through = checked(run_load(port, CHAT_PATH, body, None, 1, args.duration, wrk), "floor c=1")
        stream_direct, stream_through = stream_pair(port, CHAT_PATH, f"stream-{STREAM_CHUNKS}-{STREAM_GAP_MS}", None, up_port, args)
        chunks = chunk_cost(port, service, args)
    finally:
        service.stop()
    f["paths"] = {"server": server, "c1_added_ms": (through["p50"] - direct["p50"]) / 1000,
                  "added_ttfb_ms": stream_through["ttfb_p50_ms"] - stream_direct["ttfb_p50_ms"],
                  "cpu_ms_per_chunk": chunks["cpu_ms_per_chunk"], "chunks": chunks}


def scenario_first(budget: Table, gw: Gateway, results: dict) -> None:
    """Idle RSS per worker once one request of every kind has been served (and the process is idle)."""
    failed = run_async(first_requests("127.0.0.1", gw.port, KEY))
    if failed:
        print(f"bench: WARNING first requests not answered 200: {failed}", flush=True)
    run_load(gw.port, CHAT_PATH, body_for("gpt-bench"), KEY, 8, 1.0, None)
    settle(gw.service)
    idle = gw.service.worker_rss()
    results["idle"] = {"rss_per_worker_mb": idle, "total_rss_mb": gw.service.total_rss(), "failed_kinds": failed}
    kinds = "chat, stream, embeddings, responses, anthropic"
    budget.add("idle RSS per worker after the first request of every kind", f"({kinds})", f"{idle:.1f} MB",
               f"{idle:.1f} MB{f' ({len(failed)} kinds not answered 200)' if failed else ''}", f"<= {BUDGET_IDLE_RSS_MB} MB",
               idle <= BUDGET_IDLE_RSS_MB)


def scenario_latency(table: Table, budget: Table, gw: Gateway, up_port: int, args: argparse.Namespace,
                     wrk: str | None, results: dict, concurrency: int) -> None:
    direct = checked(run_load(up_port, UPSTREAM_PATH, body_for("gpt-bench"), None, concurrency, args.duration, wrk),
                     f"direct c={concurrency}")
    before = gw.service.cpu()
    through = checked(run_load(gw.port, CHAT_PATH, body_for("gpt-bench"), KEY, concurrency, args.duration, wrk),
                      f"gateway c={concurrency}")
    cpu = (gw.service.cpu() - before) / max(through["requests"], 1) * 1e3
    results[f"c{concurrency}"] = {"direct": direct, "gateway": through, "gateway_cpu_ms_per_req": cpu,
                                  "direct_rps": rps(direct), "gateway_rps": rps(through)}
    name = f"c={concurrency}"
    floor_cpu = figure(results, "floor", "cpu_ms_per_req")
    if concurrency == 1:
        added = (through["p50"] - direct["p50"]) / 1000
        added99 = (through["p99"] - direct["p99"]) / 1000
        table.add(f"{name}: latency p50 / p99 (ms)", f"{ms(direct['p50'])} / {ms(direct['p99'])}",
                  f"{ms(through['p50'])} / {ms(through['p99'])}", f"added p50 {added:+.2f} ms, p99 {added99:+.2f} ms")
        results["c1"]["added_p50_ms"] = added
        floor_added = figure(results, "floor", "paths", "c1_added_ms")
        if floor_added is not None:
            table.add(f"  the floor's own added p50 at c=1 ({results['floor']['paths']['server']})", "-", f"{floor_added:+.3f} ms",
                      f"{floor_added / floor_cpu:.1f}x the floor's CPU per request" if floor_cpu else "-")
        if floor_cpu:
            results["c1"]["added_p50_x_floor"] = added / floor_cpu
        budget.add("added latency p50 at c=1 (gateway minus direct)", f"floor {floor_cpu:.3f} ms CPU/req" if floor_cpu else "floor: not run",
                   f"{added:+.3f} ms", f"{added / floor_cpu:.1f}x the floor" if floor_cpu else "-",
                   f"<= {BUDGET_ADDED_P50_X_FLOOR}x the floor", added <= BUDGET_ADDED_P50_X_FLOOR * floor_cpu if floor_cpu else None)
    else:
        table.add(f"{name}: req/s, p50 / p99 (ms)", f"{rps(direct):,.0f}, {ms(direct['p50'])} / {ms(direct['p99'])}",
                  f"{rps(through):,.0f}, {ms(through['p50'])} / {ms(through['p99'])}",
                  f"{rps(through) / rps(direct):.1%} of direct req/s")
    table.add(f"{name}: gateway CPU", "-", f"{cpu:.3f} s / 1k req", f"{cpu:.3f} ms/req")
    if concurrency == 64:
        if floor_cpu:
            results["c64"]["cpu_x_floor"] = cpu / floor_cpu
        budget.add(f"gateway CPU per request, c=64 ({gw.server}, {args.workers} worker)",
                   f"floor {floor_cpu:.3f} ms" if floor_cpu else "floor: not run", f"{cpu:.3f} ms",
                   f"{cpu / floor_cpu:.1f}x the floor" if floor_cpu else "-", f"<= {BUDGET_CPU_X_FLOOR}x the floor",
                   cpu <= BUDGET_CPU_X_FLOOR * floor_cpu if floor_cpu else None)


def scenario_cache(table: Table, budget: Table, gw: Gateway, args: argparse.Namespace, wrk: str | None, results: dict) -> None:
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
    proxied = figure(results, "c64", "gateway_cpu_ms_per_req")
    versus = f" (a proxied request: {proxied:.3f})" if proxied is not None else ""
    table.add("cache hit, c=64: req/s; gateway CPU", "-", f"{rps(many):,.0f} req/s", f"{cpu:.3f} ms/hit{versus}")
    floor_cpu = figure(results, "floor", "cpu_ms_per_req")
    if floor_cpu:
        results["cache_hit"]["cpu_x_floor"] = cpu / floor_cpu
    budget.add("cache hit, c=64: gateway CPU per hit", f"floor {floor_cpu:.3f} ms" if floor_cpu else "floor: not run",
               f"{cpu:.3f} ms", f"{cpu / floor_cpu:.2f}x the floor" if floor_cpu else "-",
               f"<= {BUDGET_CACHE_X_FLOOR}x the floor", cpu <= BUDGET_CACHE_X_FLOOR * floor_cpu if floor_cpu else None)


def stream_pair(port: int, path: str, model: str, key: str | None, up_port: int, args: argparse.Namespace) -> tuple[dict, dict]:
    """Streams of STREAM_CHUNKS chunks STREAM_GAP_MS apart at c=8, straight from the upstream and through
    the server on ``port`` (``model`` as that server takes it): the stats of each (loadgen.stream_stats)."""
    plain = f"stream-{STREAM_CHUNKS}-{STREAM_GAP_MS}"
    gap = STREAM_GAP_MS / 1000
    duration = max(args.duration, 3 * STREAM_CHUNKS * gap)
    conc = STREAM_CONCURRENCY
    stagger = STREAM_CHUNKS * gap / conc
    # Warm-up: open the connections (client and upstream side) before anything is timed.
    run_async(loadgen.streams_for("127.0.0.1", port, path, body_for(model.replace(plain, "stream-3-0"), True), key, conc, 0.5))
    direct = loadgen.stream_stats(run_async(loadgen.streams_for(
        "127.0.0.1", up_port, UPSTREAM_PATH, body_for(plain, True), None, conc, duration, stagger)), gap)
    through = loadgen.stream_stats(run_async(loadgen.streams_for(
        "127.0.0.1", port, path, body_for(model, True), key, conc, duration, stagger)), gap)
    return direct, through


def scenario_stream(table: Table, budget: Table, gw: Gateway, up_port: int, args: argparse.Namespace, results: dict) -> None:
    conc = STREAM_CONCURRENCY
    direct, through = stream_pair(gw.port, CHAT_PATH, f"bench/stream-{STREAM_CHUNKS}-{STREAM_GAP_MS}", KEY, up_port, args)
    results["stream"] = {"direct": direct, "gateway": through}
    for label, s in (("direct", direct), ("gateway", through)):
        if s["complete"] < s["streams"]:
            print(f"bench: WARNING {label} streams: {s['streams'] - s['complete']} incomplete: {s['errors']}", flush=True)
    added = through["ttfb_p50_ms"] - direct["ttfb_p50_ms"]
    results["stream"]["added_ttfb_ms"] = added
    table.add(f"stream {STREAM_CHUNKS}x{STREAM_GAP_MS} ms, c={conc}: TTFB p50 / p99 (ms)",
              f"{direct['ttfb_p50_ms']:.2f} / {direct['ttfb_p99_ms']:.2f}",
              f"{through['ttfb_p50_ms']:.2f} / {through['ttfb_p99_ms']:.2f}", f"added TTFB p50 {added:+.2f} ms")
    floor_ttfb = figure(results, "floor", "paths", "added_ttfb_ms")
    if floor_ttfb is not None:
        table.add(f"  the floor's own added TTFB on these streams ({results['floor']['paths']['server']})", "-",
                  f"{floor_ttfb:+.2f} ms", f"{floor_ttfb / max(results['floor']['paths']['c1_added_ms'], 0.05):.1f}x its c=1 added")
    no_burst = (through["burst_share"] <= direct["burst_share"] + BURST_TOLERANCE
                and through["events_per_stream"] >= direct["events_per_stream"] - 0.5)
    table.add("stream: chunk gaps p50, burst share",
              f"{direct['gap_p50_ms']:.1f} ms, {direct['burst_share']:.1%}",
              f"{through['gap_p50_ms']:.1f} ms, {through['burst_share']:.1%}",
              f"{through['events_per_stream']:.0f} events/stream, one by one" if no_burst else "chunks bunched",
              "no burst", no_burst)
    c1_added = figure(results, "c1", "added_p50_ms")
    # A c=1 added latency at or under 0 (noise) would make any stream fail: the reference is at least 0.05 ms.
    ref = max(c1_added, 0.05) if c1_added is not None else None
    if ref is not None:
        results["stream"]["ttfb_x_added"] = added / ref
    budget.add(f"added TTFB p50 on streams ({STREAM_CHUNKS}x{STREAM_GAP_MS} ms, c={conc})",
               f"c=1 added {c1_added:+.3f} ms" if c1_added is not None else "c=1: not run", f"{added:+.3f} ms",
               f"{added / ref:.1f}x the c=1 added latency" if ref else "-",
               f"<= {BUDGET_TTFB_X_ADDED}x the c=1 added", added <= BUDGET_TTFB_X_ADDED * ref if ref else None)


def chunk_cost(port: int, service: Service, args: argparse.Namespace) -> dict:
    """CPU per relayed chunk of the server on ``port``: streams of CHUNK_LONG chunks against streams of 2
    (the role and the finish chunk: the least a stream has), CHUNK_GAP_MS apart so that each chunk
    arrives on its own (as from a model, not bunched into one read); the difference of CPU per stream
    over the difference of chunks is the cost of one chunk, free of the per-request cost that both
    kinds pay once."""
    per_stream = {}
    for chunks in (2, CHUNK_LONG):
        body = body_for(f"bench/stream-{chunks}-{CHUNK_GAP_MS}", True)
        length = chunks * CHUNK_GAP_MS / 1000
        run_async(loadgen.streams_for("127.0.0.1", port, CHAT_PATH, body, KEY, CHUNK_CONCURRENCY, 0.3))
        before = service.cpu()
        timings = run_async(loadgen.streams_for("127.0.0.1", port, CHAT_PATH, body, KEY, CHUNK_CONCURRENCY,
                                                args.duration, length / CHUNK_CONCURRENCY))
        cpu = service.cpu() - before
        stats = loadgen.stream_stats(timings, CHUNK_GAP_MS / 1000)
        if stats["complete"] < stats["streams"]:
            print(f"bench: WARNING chunk streams ({service.name}): {stats['streams'] - stats['complete']} incomplete: "
                  f"{stats['errors']}", flush=True)
        per_stream[chunks] = {"streams": stats["streams"], "cpu_ms_per_stream": cpu / max(stats["streams"], 1) * 1e3,
                              "events_per_stream": stats["events_per_stream"]}
    short, long_ = per_stream[2], per_stream[CHUNK_LONG]
    extra_events = max(long_["events_per_stream"] - short["events_per_stream"], 1)
    return {"by_chunks": per_stream,
            "cpu_ms_per_chunk": (long_["cpu_ms_per_stream"] - short["cpu_ms_per_stream"]) / extra_events}


def scenario_chunks(table: Table, budget: Table, gw: Gateway, args: argparse.Namespace, results: dict) -> None:
    """Gateway CPU per relayed chunk (:func:`chunk_cost`), beside the floor's when it was measured."""
    measured = chunk_cost(gw.port, gw.service, args)
    per_chunk, short, long_ = measured["cpu_ms_per_chunk"], measured["by_chunks"][2], measured["by_chunks"][CHUNK_LONG]
    request = figure(results, "c64", "gateway_cpu_ms_per_req")
    results["chunks"] = measured
    table.add(f"streams of 2 / {CHUNK_LONG} chunks {CHUNK_GAP_MS} ms apart, c={CHUNK_CONCURRENCY}: gateway CPU", "-",
              f"{short['cpu_ms_per_stream']:.3f} / {long_['cpu_ms_per_stream']:.3f} ms/stream",
              f"{per_chunk * 1000:.1f} us per chunk ({short['streams']} / {long_['streams']} streams)")
    base = figure(results, "floor", "paths", "cpu_ms_per_chunk")
    if base:
        results["chunks"]["floor_cpu_ms_per_chunk"], results["chunks"]["x_floor"] = base, per_chunk / base
        table.add(f"  the same streams through the floor ({results['floor']['paths']['server']} + bare aiohttp)", "-", "-",
                  f"{base * 1000:.1f} us per chunk ({base / results['floor']['cpu_ms_per_req']:.1%} of the floor's "
                  f"request): the gateway's is {per_chunk / base:.1f}x")
    if request:
        results["chunks"]["share_of_request"] = per_chunk / request
    budget.add("gateway CPU per streamed chunk relayed", f"c=64 request {request:.3f} ms" if request else "c=64: not run",
               f"{per_chunk * 1000:.1f} us", f"{per_chunk / request:.1%} of a request" if request else "-",
               f"<= {BUDGET_CHUNK_SHARE:.0%} of a request", per_chunk <= BUDGET_CHUNK_SHARE * request if request else None)


def scenario_body(table: Table, budget: Table, growth: Table, gw: Gateway, args: argparse.Namespace,
                  wrk: str | None, results: dict) -> None:
    """CPU per request and RSS with 1 KB, 50 KB, 200 KB prompts at c=8 (the prompt in one user message)."""
    sizes: dict[int, dict] = {}
    for kb in PROMPT_SIZES_KB:
        body = prompt_body(kb)
        run_load(gw.port, CHAT_PATH, body, KEY, 8, 0.5, wrk)
        before = gw.service.cpu()
        r = checked(run_load(gw.port, CHAT_PATH, body, KEY, 8, args.duration, wrk), f"{kb} KB prompt")
        sizes[kb] = {"cpu_ms_per_req": (gw.service.cpu() - before) / max(r["requests"], 1) * 1e3, "rps": rps(r),
                     "p50_ms": r["p50"] / 1000, "rss_mb": gw.service.worker_rss()}
    results["body"] = {str(k): v for k, v in sizes.items()}
    small, big = sizes[PROMPT_SIZES_KB[0]], sizes[PROMPT_SIZES_KB[-1]]
    ratio = big["cpu_ms_per_req"] / small["cpu_ms_per_req"]
    results["body"]["big_x_small"] = ratio
    cpus = " / ".join(f"{v['cpu_ms_per_req']:.3f}" for v in sizes.values())
    table.add(f"prompt {' / '.join(f'{k} KB' for k in sizes)}, c=8: gateway CPU", "-", f"{cpus} ms/req",
              " / ".join(f"p50 {v['p50_ms']:.2f} ms" for v in sizes.values()))
    growth.add(f"body size {' / '.join(f'{k} KB' for k in sizes)} (c=8)", f"CPU {cpus} ms/req",
               "RSS " + " / ".join(f"{v['rss_mb']:.1f}" for v in sizes.values()) + " MB",
               f"CPU x{ratio:.2f} for x{PROMPT_SIZES_KB[-1] // PROMPT_SIZES_KB[0]} the bytes")
    budget.add(f"CPU per request, {PROMPT_SIZES_KB[-1]} KB prompt", f"{PROMPT_SIZES_KB[0]} KB: {small['cpu_ms_per_req']:.3f} ms",
               f"{big['cpu_ms_per_req']:.3f} ms", f"{ratio:.2f}x", f"<= {BUDGET_BIG_PROMPT_X}x", ratio <= BUDGET_BIG_PROMPT_X)


def hold_streams(gw: Gateway, n: int, hold: float) -> dict:
    """``n`` slow streams (chunks 500 ms apart) opened within ``open_allow`` seconds, then held open
    together ``hold`` seconds; the RSS of every gateway process sampled from when they are all open (or
    the opening deadline) until 1 s before the first ends."""
    gap_ms = 500
    # Each stream lasts the time allowed to open them all (1 s per 100, at least 3 s), then ``hold``.
    open_allow = max(3.0, n / 100)
    chunks = max(int((open_allow + hold + 1) * 1000 / gap_ms), 4)
    idle_total = gw.service.total_rss()
    payload = loadgen.request_bytes("127.0.0.1", gw.port, CHAT_PATH, body_for(f"bench/stream-{chunks}-{gap_ms}", True), KEY)

    async def hold_open() -> tuple[list[tuple[float, float, int]], list[loadgen.StreamTiming]]:
        timings = [loadgen.StreamTiming() for _ in range(n)]
        firsts = [asyncio.Event() for _ in range(n)]
        sem = asyncio.Semaphore(200)  # open connections in waves, not 1000 SYNs at once

        async def one(i: int) -> None:
            async with sem:
                task = asyncio.ensure_future(loadgen.one_stream("127.0.0.1", gw.port, payload, timings[i], firsts[i]))
                waiter = asyncio.ensure_future(firsts[i].wait())
                await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
            await task

        started = time.monotonic()
        tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
        deadline = started + open_allow
        while time.monotonic() < deadline and sum(e.is_set() for e in firsts) < n:
            await asyncio.sleep(0.1)
        samples = []  # (seconds since the opening deadline, total RSS, streams open at that moment)
        open_at = time.monotonic()
        end = started + chunks * gap_ms / 1000 - 1.0
        while time.monotonic() < end or not samples:
            now_open = sum(e.is_set() for e in firsts) - sum(t.complete for t in timings)
            samples.append((time.monotonic() - open_at, gw.service.total_rss(), now_open))
            await asyncio.sleep(0.25)
        await asyncio.gather(*tasks)
        return samples, timings

    samples, timings = run_async(hold_open())
    complete = sum(t.complete for t in timings)
    if complete < n:
        errors = [t.error or f"status {t.status}" for t in timings if not t.complete][:3]
        print(f"bench: WARNING open streams: {n - complete} of {n} incomplete: {errors}", flush=True)
    # Judged on the samples taken while the most streams were open together (a busy machine may still
    # be opening them when sampling starts: those samples would count memory for streams not yet open).
    opened = max(o for _, _, o in samples)
    full = [(t, v) for t, v, o in samples if o >= opened] or [(t, v) for t, v, _ in samples]
    values = [v for _, v in full]
    third = max(len(values) // 3, 1)
    early, late = sorted(values[:third])[third // 2], sorted(values[-third:])[third // 2]
    peak = max(values)
    streams_mb = max(peak - idle_total, 0.0)
    allowed = max(HOLD_FLAT_MB, HOLD_FLAT_SHARE * streams_mb)
    return {"streams": n, "opened_together": opened, "complete": complete, "held_s": full[-1][0] - full[0][0],
            "idle_total_rss_mb": idle_total, "during_rss_mb": peak, "early_rss_mb": early, "late_rss_mb": late,
            "kb_per_stream": streams_mb * 1024 / max(opened, 1), "growth_while_held_mb": late - early,
            "flat": late - early <= allowed, "flat_allowed_mb": allowed}


def scenario_open_streams(table: Table, budget: Table, growth: Table, gw: Gateway, args: argparse.Namespace,
                          results: dict) -> None:
    idle = gw.service.worker_rss()
    table.add("RSS per worker after the load scenarios", "-", f"{idle:.1f} MB", f"{idle:.1f} MB")
    counts = sorted({min(100, args.streams), args.streams})
    held: dict[int, dict] = {}
    for n in counts:
        held[n] = h = hold_streams(gw, n, args.hold if n == args.streams else min(args.hold, 6.0))
        table.add(f"{n} open streams, all open for {h['held_s']:.0f} s: RSS before -> during", "-",
                  f"{h['idle_total_rss_mb']:.1f} -> {h['during_rss_mb']:.1f} MB",
                  f"{h['kb_per_stream']:.1f} KB/stream, {h['growth_while_held_mb']:+.1f} MB while held "
                  f"({h['opened_together']} open together, {h['complete']} complete)")
    results["open_streams"] = {str(n): h for n, h in held.items()}
    if len(counts) > 1:
        a, b = held[counts[0]], held[counts[-1]]
        growth.add(f"open streams {counts[0]} / {counts[-1]}", "-",
                   f"RSS +{a['during_rss_mb'] - a['idle_total_rss_mb']:.1f} / +{b['during_rss_mb'] - b['idle_total_rss_mb']:.1f} MB",
                   f"{a['kb_per_stream']:.1f} / {b['kb_per_stream']:.1f} KB per stream")
    h = held[args.streams]
    ok = (h["kb_per_stream"] <= BUDGET_KB_PER_STREAM and h["flat"] and h["complete"] == h["streams"]
          and h["opened_together"] == h["streams"])
    budget.add(f"memory per open stream, {h['streams']:,} open together for {h['held_s']:.0f} s",
               f"RSS before {h['idle_total_rss_mb']:.1f} MB", f"{h['during_rss_mb']:.1f} MB",
               f"{h['kb_per_stream']:.1f} KB/stream, {h['growth_while_held_mb']:+.1f} MB while held",
               f"<= {BUDGET_KB_PER_STREAM} KB, flat (<= +{h['flat_allowed_mb']:.1f} MB)", ok)


def scenario_workers(growth: Table, workdir: Path, up_port: int, args: argparse.Namespace, wrk: str | None,
                     results: dict) -> None:
    """The same c=64 load on 2 workers: CPU per request (every process) and RSS per worker and in all."""
    one = figure(results, "c64", "gateway_cpu_ms_per_req")
    gw = start_gateway(workdir, up_port, args, args.server, args.transport, workers=2)
    try:
        run_async(first_requests("127.0.0.1", gw.port, KEY))
        run_load(gw.port, CHAT_PATH, body_for("gpt-bench"), KEY, 64, 1.0, wrk)
        settle(gw.service)
        idle, total = gw.service.worker_rss(), gw.service.total_rss()
        before = gw.service.cpu()
        r = checked(run_load(gw.port, CHAT_PATH, body_for("gpt-bench"), KEY, 64, args.duration, wrk), "2 workers c=64")
        cpu = (gw.service.cpu() - before) / max(r["requests"], 1) * 1e3
    finally:
        gw.service.stop()
    results["workers2"] = {"cpu_ms_per_req": cpu, "rps": rps(r), "rss_per_worker_mb": idle, "total_rss_mb": total}
    rss1 = figure(results, "idle", "rss_per_worker_mb")
    tot1 = figure(results, "idle", "total_rss_mb")
    growth.add("workers 1 / 2 (c=64)",
               f"CPU {one:.3f} / {cpu:.3f} ms/req" if one else f"CPU - / {cpu:.3f} ms/req",
               f"RSS {tot1:.1f} / {total:.1f} MB in all" if tot1 else f"RSS - / {total:.1f} MB in all",
               f"{rps(results['c64']['gateway']) if one else 0:,.0f} / {rps(r):,.0f} req/s; per worker "
               f"{rss1 or 0:.1f} / {idle:.1f} MB")


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

SCENARIOS = ("upstream", "floor", "first", "c1", "c8", "c64", "cache", "stream", "chunks", "body", "open", "soak",
             "workers")
#: --check: the short run's scenarios (no soak, no second gateway), then bench/instr.py.
CHECK_SCENARIOS = ("floor", "first", "c1", "c64", "cache", "stream", "chunks", "body", "open")


def run_all(args: argparse.Namespace, workdir: Path, wrk: str | None) -> dict:
    only = set(args.only.split(",")) if args.only else set(SCENARIOS)
    up, up_port = start_upstream(workdir)
    results: dict = {"machine": machine(), "loadavg_start": loadavg(), "load_generator": wrk or "asyncio (bench/loadgen.py)"}
    table, budget = Table(), Table(("budget line (issue 17)", "reference (same run)", "gateway", "figure", "budget", "verdict"))
    growth = Table(("growth", "CPU", "memory", "how it grows"))
    try:
        if "upstream" in only:
            scenario_upstream(table, up, up_port, args, wrk, results)
        if "floor" in only:
            scenario_floor(table, up_port, args, wrk, workdir, results, paths=bool(only & {"c1", "stream", "chunks"}))
        gw = start_gateway(workdir, up_port, args, args.server, args.transport)
        try:
            results.update(pipeline=gw.pipeline, server=gw.server, transport=gw.transport, workers=args.workers)
            print(f"bench: gateway pipeline [{gw.pipeline}], server {gw.server}, transport {gw.transport}, "
                  f"{args.workers} worker(s); load generator {results['load_generator']}", flush=True)
            if "first" in only:
                scenario_first(budget, gw, results)
            else:  # what loads on first need (a tokenizer) must not land in a later scenario's figures
                run_async(first_requests("127.0.0.1", gw.port, KEY))
                settle(gw.service)
            run_load(gw.port, CHAT_PATH, body_for("gpt-bench"), KEY, 8, 1.0, wrk)  # warm-up
            for c in (1, 8, 64):
                if f"c{c}" in only:
                    scenario_latency(table, budget, gw, up_port, args, wrk, results, c)
            if "cache" in only:
                scenario_cache(table, budget, gw, args, wrk, results)
            if "stream" in only:
                scenario_stream(table, budget, gw, up_port, args, results)
            if "chunks" in only:
                scenario_chunks(table, budget, gw, args, results)
            if "body" in only:
                scenario_body(table, budget, growth, gw, args, wrk, results)
            if "open" in only:
                scenario_open_streams(table, budget, growth, gw, args, results)
            if "soak" in only:
                scenario_soak(table, gw, args, wrk, results)
            if args.profile:
                results["profile"] = profile(gw, up_port, args, wrk, workdir)
        finally:
            gw.service.stop()
        if "workers" in only and args.workers == 1:
            scenario_workers(growth, workdir, up_port, args, wrk, results)
    finally:
        up.stop()
    results["loadavg_end"] = loadavg()
    results["table"] = table.render()
    results["budget"] = budget.render() if budget.rows else ""
    results["growth"] = growth.render() if growth.rows else ""
    results["all_pass"] = all(table.verdicts) and all(budget.verdicts)
    results["unjudged"] = len(budget.rows) - len(budget.verdicts)
    return results


# -- the regression check -------------------------------------------------------------------------

FIGURES_FILE = BENCH / "figures.json"
#: The figures --check compares (all: lower is better). Load-independent ones are always judged; the
#: timing ones only on a quiet machine (load average at the start under half the cores).
CHECKED = {
    "instr_gateway_per_req": ("instructions per request, gateway (M)", True),
    "instr_x_floor": ("instructions per request, gateway / floor", True),
    "idle_rss_per_worker_mb": ("idle RSS per worker after every kind (MB)", True),
    "kb_per_open_stream": ("memory per open stream (KB)", True),
    "cpu_x_floor_c64": ("CPU per request c=64 / floor", False),
    "added_p50_x_floor_c1": ("added p50 c=1 / floor CPU", False),
    "stream_ttfb_x_added": ("stream added TTFB / c=1 added", False),
    "chunk_share_of_request": ("CPU per chunk / CPU per request", False),
    "big_prompt_x_small": ("CPU 200 KB prompt / 1 KB prompt", False),
    "cache_x_floor": ("CPU per cache hit / floor", False),
}


def check_figures(results: dict, instr: dict | None) -> dict:
    """The figures of CHECKED from one run's results (a figure whose scenario did not run is left out)."""
    streams = results.get("open_streams", {})
    held = streams[max(streams, key=int)] if streams else {}
    found = {
        "instr_gateway_per_req": instr["gateway"] / 1e6 if instr else None,
        "instr_x_floor": instr["ratio"] if instr else None,
        "idle_rss_per_worker_mb": figure(results, "idle", "rss_per_worker_mb"),
        # Only when every stream was open together (else the machine was too busy to measure it).
        "kb_per_open_stream": held.get("kb_per_stream") if held.get("opened_together") == held.get("streams") else None,
        "cpu_x_floor_c64": figure(results, "c64", "cpu_x_floor"),
        "added_p50_x_floor_c1": figure(results, "c1", "added_p50_x_floor"),
        "stream_ttfb_x_added": figure(results, "stream", "ttfb_x_added"),
        "chunk_share_of_request": figure(results, "chunks", "share_of_request"),
        "big_prompt_x_small": figure(results, "body", "big_x_small"),
        "cache_x_floor": figure(results, "cache_hit", "cpu_x_floor"),
    }
    return {k: round(v, 4) for k, v in found.items() if v is not None}


def judge(figures: dict, recorded: dict, quiet: bool) -> tuple[list[str], bool]:
    """Lines comparing this run with the recorded figures; False when a judged one is > 20 % worse."""
    lines, ok = [], True
    for key, (label, load_independent) in CHECKED.items():
        if key not in figures or key not in recorded:
            continue
        now, then = figures[key], recorded[key]
        worse = (now - then) / abs(then) if then else 0.0
        judged = load_independent or quiet
        bad = judged and worse > CHECK_TOLERANCE
        ok = ok and not bad
        verdict = ("FAIL" if bad else "ok") if judged else "not judged (busy machine)"
        lines.append(f"  {label:46} {then:10.4g} -> {now:10.4g}  {worse:+7.1%}  {verdict}")
    return lines, ok


def run_check(args: argparse.Namespace, workdir: Path, wrk: str | None) -> int:
    """The short run and the instruction counts, against bench/figures.json; non-zero when worse."""
    import instr

    quiet = float(loadavg().split()[0]) < (os.cpu_count() or 1) / 2
    args.only = args.only or ",".join(CHECK_SCENARIOS)
    results = run_all(args, workdir, wrk)
    print(results["budget"])
    counts = None
    if not args.no_instr:
        print("bench: instructions per request under callgrind (bench/instr.py) ...", flush=True)
        counts = instr.measure(args, workdir)
    figures = check_figures(results, counts)
    recorded = json.loads(FIGURES_FILE.read_text()) if FIGURES_FILE.exists() else {"figures": {}}
    if args.record:
        recorded = {"recorded": f"{time.strftime('%Y-%m-%d %H:%M')}, load average {results['loadavg_start']} at the start, "
                                f"{results['machine']}; {results['server']}, transport {results['transport']}",
                    "figures": figures}
        FIGURES_FILE.write_text(json.dumps(recorded, indent=2) + "\n")
        print(f"bench: recorded {len(figures)} figures in {FIGURES_FILE}")
        return 0
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "instr": counts, "figures": figures}, indent=2, default=str))
    lines, ok = judge(figures, recorded["figures"], quiet)
    print(f"\ncheck against {FIGURES_FILE.name} ({recorded.get('recorded', '?')}); a figure more than "
          f"{CHECK_TOLERANCE:.0%} worse fails; load average {results['loadavg_start']} at the start "
          f"({'quiet: timing figures judged' if quiet else 'busy: only load-independent figures judged'}):")
    print("\n".join(lines) or "  (no figure in common)")
    print(f"check: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


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
    parser.add_argument("--full", action="store_true", help="the full set: 15 s scenarios, streams held 60 s, the 10-minute soak")
    parser.add_argument("--only", help=f"comma-separated scenarios of {','.join(SCENARIOS)}")
    parser.add_argument("--streams", type=int, default=1000, help="open streams held together (default 1000; 100 too)")
    parser.add_argument("--hold", type=float, default=15.0, help="seconds the open streams are held (default 15; --full: 60)")
    parser.add_argument("--check", action="store_true", help="short run + instruction counts against bench/figures.json")
    parser.add_argument("--record", action="store_true", help="with --check: write this run's figures to bench/figures.json")
    parser.add_argument("--no-instr", action="store_true", help="with --check: leave out the callgrind counts")
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes (default 1)")
    parser.add_argument("--server", help="hypercorn, uvicorn or granian (default: serve's own default)")
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
    import instr

    instr.add_arguments(parser)
    args = parser.parse_args()
    if args.full:
        args.duration = max(args.duration, 15.0)
        args.soak = max(args.soak, 600.0)
        args.hold = max(args.hold, 60.0)
    if args.check:  # the short mode
        args.duration = min(args.duration, 2.0)
        args.hold = min(args.hold, 10.0)
        args.streams = min(args.streams, 1000)
    wrk = None if args.asyncio_load else ensure_wrk(not args.no_install)
    if wrk is None:
        print("bench: wrk not found; using the asyncio load generator (bench/loadgen.py)", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="respan-bench-"))
    print(f"bench: {machine()}; load average {loadavg()}; work dir {workdir}", flush=True)
    try:
        if args.check:
            return run_check(args, workdir, wrk)
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
    if results.get("budget"):
        print()
        print(results["budget"])
    if results.get("growth"):
        print()
        print(results["growth"])
    if results.get("profile"):
        print()
        print(results["profile"])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    if not args.matrix:
        verdict = 'every judged line passes' if results['all_pass'] else 'some lines FAIL (see bench/README.md)'
        unjudged = f"; {results['unjudged']} line(s) not judged (their reference did not run)" if results["unjudged"] else ""
        print(f"\nbudget: {verdict}{unjudged}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
