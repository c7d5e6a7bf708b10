"""Instructions per request under callgrind: the bench's load-independent figure.

    python bench/instr.py                  # gateway and floor, 400 requests each after warm-up
    python bench/instr.py --requests 1000 --server uvicorn
    python bench/instr.py --body-kb 200 --no-floor   # the gateway alone, chat requests of a 200 KB prompt

Wall-clock and CPU-time figures move by 20-50% with whatever else runs on the machine; the number of
instructions a process executes to answer N requests does not (the floor repeats within 0.2%, the
gateway within about 3-5%: its per-request work is lumpier, a log batch written now and then). So the
regression check of ``bench/run.py --check`` judges this figure first:

- the gateway (``respan-gateway serve``, the bench's config: the full default pipeline, 1 worker, the
  server ``serve`` picks by default) runs under ``valgrind --tool=callgrind --instr-atstart=no``
  (start-up runs uninstrumented, which is several times faster);
- once it answers: instrumentation on (``callgrind_control -i on``), then the warm-up: one request of
  every kind (chat, stream, embeddings, responses, native Anthropic) so that everything loaded on first
  need is loaded, then ``--warmup`` chat requests, then a wait until the process is idle (a tokenizer
  loading in a thread would otherwise be counted);
- counters zeroed (``callgrind_control -z``), half of ``--requests`` chat requests at c=8 from a client
  outside the process (the bench's raw-socket generator), a dump (``callgrind_control -d``), the same
  for the other half (the two halves must agree within 10%, else a warning: something lazy ran in one);
  the instructions (Ir) of every process of the gateway's tree; less what the idle process executes
  per second (zeroed again, 5 s idle, dumped) times the runs' wall time; divided by the requests;
- the same for the floor of the stack (``bench/floor.py``'s proxy: the fastest server and bare aiohttp,
  no gateway code) under each of ``--floor-servers``; the least is the floor.

The figure is gateway / floor (and each alone). The upstream and the client run outside valgrind.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import floor  # noqa: E402
import loadgen  # noqa: E402
import run  # noqa: E402

VALGRIND = "/usr/bin/valgrind"
CONCURRENCY = 8
IDLE_SECONDS = 5.0
# The two halves of the count agree within this, or a warning (a log batch written, a GC pass in one
# half: lumpy per-request work, real but uneven, gives some 5-9% on 150 requests).
SPREAD_WARN = 0.10


def _control(pids: list[int], *flags: str) -> None:
    """``callgrind_control`` on each process of the tree that runs under callgrind, by its pid."""
    for pid in pids:
        subprocess.run(["callgrind_control", *flags, str(pid)], capture_output=True, text=True, timeout=120)


def _valgrind_pids(service: run.Service) -> list[int]:
    """The processes of the tree that callgrind runs (valgrind execs the tool in place of the command)."""
    pids = []
    for pid in service.pids:
        try:
            exe = Path(f"/proc/{pid}/exe").resolve().name
        except OSError:
            continue
        if "callgrind" in exe or "valgrind" in exe or "memcheck" in exe:
            pids.append(pid)
    return pids or service.pids


def _dumped_instructions(out_dir: Path, since: float) -> int:
    """The sum of the Ir totals of every dump written after ``since`` (one per process of the tree)."""
    total = 0
    for path in out_dir.glob("callgrind.out.*"):
        if path.stat().st_mtime < since:
            continue
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                total += int(line.split()[1])
                break
    return total


def valgrind_prefix(out_dir: Path) -> list[str]:
    return [VALGRIND, "--tool=callgrind", "--instr-atstart=no", "--trace-children=yes",
            f"--callgrind-out-file={out_dir}/callgrind.out.%p", "--dump-instr=no", "--dump-line=no"]


def first_of_every_kind(port: int, key: str | None) -> None:
    """One request of every kind the bench upstream answers, through the gateway (see bench/run.py)."""
    run.run_async(run.first_requests("127.0.0.1", port, key))


def _dump(pids: list[int], out_dir: Path) -> int:
    """Dump every process's counters; the instructions since the last zeroing, in all."""
    since = time.time() - 0.5
    _control(pids, "-d")
    deadline = time.monotonic() + 60
    total = 0
    while time.monotonic() < deadline and not total:
        time.sleep(0.5)
        total = _dumped_instructions(out_dir, since)
    if not total:
        raise SystemExit(f"instr: callgrind wrote no dump in {out_dir} (callgrind_control could not reach the process?)")
    return total


def count(service: run.Service, port: int, path: str, body: bytes, key: str | None, warmup: int, requests: int,
          out_dir: Path, every_kind: bool, settle_halves: bool = False) -> dict:
    """Instructions per request; less the work the idle process does per second (its timers: a log
    writer's flush, a metrics tick) times the measured run's wall time, which under valgrind is some
    50 times longer than without and longer still on a busy machine: without it, the figure would
    grow with the machine's load. ``settle_halves``: wait until the process is idle before each dump,
    so that the log writes of a half's records (seconds of SQLite under valgrind with large prompts)
    are counted in that half, not in the idle run that is taken off."""
    pids = _valgrind_pids(service)
    _control(pids, "-i", "on")
    if every_kind:
        first_of_every_kind(port, key)
    run.run_async(loadgen.fixed_count("127.0.0.1", port, path, body, key, CONCURRENCY, warmup))
    # Under valgrind a tokenizer loading in a thread takes minutes: wait for it, however long.
    if not run.settle(service, timeout=900):
        print("instr: WARNING the process never went idle after the warm-up", flush=True)
    halves = []
    for n in (requests // 2, requests - requests // 2):  # two halves: a lazy load in one shows as a gap
        _control(pids, "-z")
        started = time.monotonic()
        done = run.run_async(loadgen.fixed_count("127.0.0.1", port, path, body, key, CONCURRENCY, n))
        if done["failed"] or done["requests"] < n:
            raise SystemExit(f"instr: {done['failed']} of {n} requests failed:\n{service.tail()}")
        if settle_halves and not run.settle(service, timeout=600):
            print("instr: WARNING the process never went idle after a half", flush=True)
        wall = time.monotonic() - started
        halves.append((_dump(pids, out_dir), wall))
    _control(pids, "-z")
    time.sleep(IDLE_SECONDS)
    idle_per_s = _dump(pids, out_dir) / IDLE_SECONDS
    per_half = [max(total - idle_per_s * wall, 0) / n
                for (total, wall), n in zip(halves, (requests // 2, requests - requests // 2))]
    spread = abs(per_half[0] - per_half[1]) / max(min(per_half), 1)
    if spread > SPREAD_WARN:
        print(f"instr: WARNING the two halves differ by {spread:.0%} ({per_half[0] / 1e6:.3f} / {per_half[1] / 1e6:.3f} M): "
              "something ran in one of them only (a lazy load, a timer)", flush=True)
    total = sum(t for t, _ in halves)
    wall = sum(w for _, w in halves)
    return {"raw": total / requests, "idle_per_s": idle_per_s, "wall_s": wall, "halves": per_half, "spread": spread,
            "per_request": max(total - idle_per_s * wall, 0) / requests}


#: Valgrind runs the gateway some 50x slower, SQLite's work in user space too (kernel work is not
#: slowed): a log batch can outlast [logging] write_timeout's 5 s there and go to the spill file,
#: whose replay would be counted as requests' work. The log writer gets longer under valgrind.
VALGRIND_TOML = "[logging]\nwrite_timeout = 120.0\n"


def under_valgrind(args: argparse.Namespace, workdir: Path) -> argparse.Namespace:
    """``args`` with :data:`VALGRIND_TOML` appended to its ``--extra-toml`` (unless that sets [logging])."""
    extra = Path(args.extra_toml).read_text() if args.extra_toml else ""
    if "[logging]" in extra or "logging" not in run.installed_plugins():
        return args
    path = workdir / "valgrind-extra.toml"
    path.write_text(extra + "\n" + VALGRIND_TOML)
    return argparse.Namespace(**{**vars(args), "extra_toml": str(path)})


def measure(args: argparse.Namespace, workdir: Path) -> dict:
    up, up_port = run.start_upstream(workdir)
    body_kb = getattr(args, "body_kb", None)  # run.py --check: the usual small chat request
    body = run.prompt_body(body_kb) if body_kb else run.body_for("gpt-bench")
    results: dict = {"requests": args.requests, "warmup": args.warmup, "concurrency": CONCURRENCY,
                     "body_bytes": len(body)}
    try:
        out = workdir / "callgrind-gateway"
        out.mkdir()
        gw = run.start_gateway(workdir, up_port, under_valgrind(args, workdir), args.server, args.transport, workers=1,
                               prefix=valgrind_prefix(out))
        try:
            results["gateway_counts"] = count(gw.service, gw.port, run.CHAT_PATH, body, run.KEY, args.warmup,
                                              args.requests, out, every_kind=True, settle_halves=bool(body_kb))
            results["gateway"] = results["gateway_counts"]["per_request"]
            results.update(server=gw.server, transport=gw.transport, pipeline=gw.pipeline)
        finally:
            gw.service.stop()
        print(f"  .. gateway ({results['server']}): {results['gateway'] / 1e6:.3f} M instructions/request", flush=True)
        floors = {}
        for server in [] if getattr(args, "no_floor", False) else args.floor_servers.split(","):
            out = workdir / f"callgrind-floor-{server}"
            out.mkdir()
            service, port = floor.start_proxy(server, workdir, up_port, prefix=valgrind_prefix(out))
            try:
                counts = count(service, port, "/", body, None, args.warmup, args.requests, out, every_kind=False,
                               settle_halves=bool(body_kb))
                floors[server] = counts["per_request"]
                results[f"floor_counts_{server}"] = counts
            finally:
                service.stop()
            print(f"  .. floor {server}: {floors[server] / 1e6:.3f} M instructions/request", flush=True)
    finally:
        up.stop()
    if floors:
        best = min(floors, key=floors.get)
        results.update(floor=floors[best], floor_server=best, floor_by_server=floors, ratio=results["gateway"] / floors[best])
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=400, help="measured requests (default 400)")
    parser.add_argument("--warmup", type=int, default=100, help="chat requests before counting (default 100)")
    parser.add_argument("--floor-servers", default="uvicorn,granian", help="servers for the floor (the least counts)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    parser.add_argument("--server", help="the gateway's server (default: serve's default)")
    parser.add_argument("--transport", help="[upstream] transport (default: the gateway's default)")
    parser.add_argument("--disable", type=lambda s: [x for x in s.split(",") if x], default=[])
    parser.add_argument("--extra-toml")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--body-kb", type=int, help="chat requests whose user message makes the body N KB "
                        "(bench/run.py's scenario `body`), for gateway and floor; default: the usual small request")
    parser.add_argument("--no-floor", action="store_true", help="count the gateway only")
    args = parser.parse_args()
    args.workers = 1
    workdir = Path(tempfile.mkdtemp(prefix="respan-instr-"))
    print(f"instr: {run.machine()}; work dir {workdir}", flush=True)
    started = time.monotonic()
    r = measure(args, workdir)
    print(f"\ninstructions per request ({args.requests} requests of {r['body_bytes']} bytes at c={CONCURRENCY} after "
          f"{args.warmup} warm-up, {time.monotonic() - started:.0f} s):")
    print(f"  gateway ({r['server']}, pipeline [{r['pipeline']}]): {r['gateway'] / 1e6:.3f} M "
          f"(halves {r['gateway_counts']['spread']:.1%} apart)")
    if "floor" in r:
        print(f"  floor ({r['floor_server']} + bare aiohttp): {r['floor'] / 1e6:.3f} M")
        print(f"  gateway / floor: {r['ratio']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
