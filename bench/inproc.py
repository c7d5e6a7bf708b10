"""The pipeline's own CPU per request, in one process: no server, no upstream socket, no load generator.

    python bench/inproc.py                        # proxied chat requests at c=64, five rounds
    python bench/inproc.py --cached               # cache hits (every request after the first)
    python bench/inproc.py --disable logging      # ... without a plugin (its cost is the difference)
    python bench/inproc.py --profile              # then a cProfile of one more round (self time)

The gateway of the bench's config (every installed plugin, the default order, as ``bench/run.py``
writes it) runs as an ASGI app driven directly (``chunk_instr._call``), against an in-process upstream
transport that answers the bench upstream's completion after one pass of the event loop. Each round
is ``--requests`` chat requests from ``--concurrency`` lanes; its figure is the process CPU (every
thread: the SQLite writer's too) per request, taken after a pause that lets the writer write the
round's records. The spread between rounds and runs is about +-4 us on a quiet machine: compare two
versions with several runs each. What the server and the upstream client cost is in ``floor.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chunk_instr  # noqa: E402
import run  # noqa: E402
from upstream import COMPLETION  # noqa: E402

TRANSPORT = "bench-inproc"


class _Response:
    status_code = 200
    headers = {"content-type": "application/json"}
    content = COMPLETION

    async def aread(self) -> bytes:
        return COMPLETION

    async def aiter_bytes(self):  # type: ignore[no-untyped-def]
        yield COMPLETION

    async def aclose(self) -> None:
        pass


class _Client:
    """The in-process upstream: every request is answered with the bench upstream's completion."""

    def __init__(self, settings: object) -> None:
        pass

    async def send(self, method, url, headers, body, timeout, *, stream=False):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)  # the wait for the network
        return _Response()

    async def aclose(self) -> None:
        pass


async def measure(args: argparse.Namespace) -> list[float]:
    from respan_gateway import upstream
    from respan_gateway.app import create_app
    from respan_gateway.config import Config

    os.chdir(tempfile.mkdtemp(prefix="respan-inproc-"))  # the log's SQLite file lands there
    upstream.TRANSPORTS[TRANSPORT] = _Client
    app = create_app(Config.from_text(run.gateway_config(0, 0, 1, TRANSPORT, args.disable, "")))
    stop = await chunk_instr.start(app)
    body = run.body_for("gpt-bench", False, cached=args.cached)

    async def requests(n: int) -> None:
        left = [n]

        async def lane() -> None:
            while left[0] > 0:
                left[0] -= 1
                await chunk_instr._call(app, body)

        await asyncio.gather(*(lane() for _ in range(args.concurrency)))

    await requests(1000)  # warm-up
    rounds = []
    for _ in range(args.rounds):
        await asyncio.sleep(0.6)
        started = time.process_time()
        await requests(args.requests)
        await asyncio.sleep(0.6)  # the writer's batch of these records
        rounds.append((time.process_time() - started) / args.requests * 1e6)
    if args.profile:  # one more round, not counted: the profiler slows it
        profiler = cProfile.Profile()
        profiler.enable()
        await requests(args.requests)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    await stop()
    return rounds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per round (default 3000)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--cached", action="store_true", help="cache_enabled: every request after the first is a hit")
    parser.add_argument("--disable", type=lambda s: [x for x in s.split(",") if x], default=[], help="plugins left out")
    parser.add_argument("--profile", action="store_true", help="then a cProfile of one more round (not counted)")
    args = parser.parse_args()
    rounds = asyncio.run(measure(args))
    ordered = sorted(rounds)
    what = "cache hits" if args.cached else "proxied requests"
    without = f", without {', '.join(args.disable)}" if args.disable else ""
    print(f"inproc: {run.machine()}")
    print(f"gateway CPU per request ({what}{without}, c={args.concurrency}): median {ordered[len(ordered) // 2]:.1f} us, "
          f"min {ordered[0]:.1f} us; rounds {', '.join(f'{r:.1f}' for r in rounds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
