"""Instructions per relayed stream chunk under callgrind: the load-independent figure of the ``chunks`` line.

    python bench/chunk_instr.py                   # in-process upstream: each event its own read
    python bench/chunk_instr.py --socket          # the bench upstream over a socket, chunks --gap-ms apart

The gateway of the bench's config (every installed plugin, the default order) runs in this process as
an ASGI app driven directly (no server: its cost per chunk is the server's, not the gateway's), under
``valgrind --tool=callgrind --instr-atstart=no`` (the script re-runs itself so). After a warm-up (both
kinds of stream, the tokenizer loaded), instrumentation goes on and the instructions of the idle
process per second are taken; then ``--short`` streams of 2 chunks (role and finish) and ``--long``
streams of 102, each kind zeroed and dumped (``callgrind_control``), less the idle rate times its wall
time. The difference per stream over the 100 chunks between them is the cost of one relayed chunk,
free of the per-request cost. The in-process upstream hands each event over after a pass of the event
loop, as a socket read would, so that no two events are read together however slow valgrind is (over a
socket they bunch unless the gap is far longer than valgrind's time per chunk: ``--socket --gap-ms 150``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import instr  # noqa: E402
import run  # noqa: E402

import msgspec  # noqa: E402

IDLE_SECONDS = 5.0


def _frames(n: int) -> list[bytes]:
    """The events of one streamed answer as bench/upstream.py sends them (without the HTTP chunking)."""
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": "gpt-bench",
            "system_fingerprint": "fp_bench"}

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        return b"data: " + msgspec.json.encode(
            {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}) + b"\n\n"

    return ([chunk({"role": "assistant", "content": "", "refusal": None})]
            + [chunk({"content": f"word{i} "}) for i in range(max(n - 2, 0))] + [chunk({}, "stop"), b"data: [DONE]\n\n"])


class _Response:
    status_code = 200
    headers = {"content-type": "text/event-stream"}

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames

    @property
    def content(self) -> bytes:
        raise RuntimeError("streamed")

    async def aiter_bytes(self):  # type: ignore[no-untyped-def]
        for frame in self.frames:
            await asyncio.sleep(0)  # the wait for the network that each chunk has
            yield frame

    async def aread(self) -> bytes:
        return b"".join(self.frames)

    async def aclose(self) -> None:
        pass


class _Client:
    """An in-process upstream client: streams of ``bench/stream-<n>-<gap>`` answered at once, event by event."""

    _cache: dict[int, list[bytes]] = {}

    def __init__(self, settings: object) -> None:
        pass

    async def send(self, method, url, headers, body, timeout, *, stream=False):  # type: ignore[no-untyped-def]
        n = int(re.search(rb"stream-(\d+)-", body)[1])  # type: ignore[index]
        frames = self._cache.get(n) or self._cache.setdefault(n, _frames(n))
        await asyncio.sleep(0)
        return _Response(frames)

    async def aclose(self) -> None:
        pass


async def _call(app, body: bytes) -> int:  # type: ignore[no-untyped-def]
    """One chat request through the ASGI app; the number of body messages sent."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    ended = asyncio.Event()
    sent = [0]

    async def receive():  # type: ignore[no-untyped-def]
        if messages:
            return messages.pop()
        await ended.wait()
        return {"type": "http.disconnect"}

    async def send(message):  # type: ignore[no-untyped-def]
        if message["type"] == "http.response.body":
            sent[0] += 1
            if not message.get("more_body"):
                ended.set()

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": run.CHAT_PATH, "raw_path": run.CHAT_PATH.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                         (b"authorization", f"Bearer {run.KEY}".encode()), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2), "state": {}}
    await app(scope, receive, send)
    return sent[0]


async def start(app):  # type: ignore[no-untyped-def]
    """Run the ASGI app's lifespan startup; returns the coroutine function that shuts it down."""
    lifespan_in: asyncio.Queue = asyncio.Queue()
    lifespan_out: asyncio.Queue = asyncio.Queue()
    await lifespan_in.put({"type": "lifespan.startup"})
    lifespan = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                         lifespan_in.get, lifespan_out.put))
    assert (await lifespan_out.get())["type"] == "lifespan.startup.complete"

    async def stop() -> None:
        await lifespan_in.put({"type": "lifespan.shutdown"})
        await lifespan

    return stop


async def _streams(app, chunks: int, gap_ms: int, n: int, concurrency: int) -> list[int]:  # type: ignore[no-untyped-def]
    body = run.body_for(f"bench/stream-{chunks}-{gap_ms}", True)
    left, sent = [n], []

    async def lane() -> None:
        while left[0] > 0:
            left[0] -= 1
            sent.append(await _call(app, body))

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return sent


def _counted(out: Path, since: float) -> int:
    subprocess.run(["callgrind_control", "-d", str(os.getpid())], capture_output=True)
    total = 0
    while not total:
        time.sleep(0.2)
        total = instr._dumped_instructions(out, since)
    for path in out.glob("callgrind.out.*"):  # read once: the next dump is counted alone
        path.rename(path.with_name(f"read-{path.name}-{time.time():.3f}"))
    return total


async def inner(args: argparse.Namespace, out: Path) -> None:
    from respan_gateway import tokens, upstream
    from respan_gateway.app import create_app
    from respan_gateway.config import Config

    workdir = Path(tempfile.mkdtemp(prefix="respan-chunk-instr-"))
    up, up_port = run.start_upstream(workdir)
    try:
        os.chdir(workdir)  # the log's SQLite file lands there
        if not args.socket:
            upstream.TRANSPORTS["bench-inprocess"] = _Client
        app = create_app(Config.from_text(run.gateway_config(up_port, 0, 1, None if args.socket else "bench-inprocess", [], "")))
        stop = await start(app)
        loading = tokens.preload()
        for chunks in (2, args.long, 2):
            await _streams(app, chunks, args.gap_ms, 8, args.concurrency)
        while loading.is_alive():
            await asyncio.sleep(0.5)
        subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], capture_output=True)
        await asyncio.sleep(0.5)
        subprocess.run(["callgrind_control", "-z", str(os.getpid())], capture_output=True)
        await asyncio.sleep(IDLE_SECONDS)
        idle = _counted(out, time.time() - 0.5) / IDLE_SECONDS
        per_stream = {}
        for chunks, n in ((2, args.short), (args.long, args.streams)):
            subprocess.run(["callgrind_control", "-z", str(os.getpid())], capture_output=True)
            started = time.monotonic()
            sent = await _streams(app, chunks, args.gap_ms, n, args.concurrency)
            wall = time.monotonic() - started
            total = _counted(out, time.time() - 0.5)
            assert len(set(sent)) == 1 and sent[0] == chunks + 1, sent  # every chunk, then the [DONE] tail
            per_stream[chunks] = (total - idle * wall) / n
            print(f"  streams of {chunks}: {per_stream[chunks] / 1e6:.3f} M instructions/stream "
                  f"(raw {total / n / 1e6:.3f} M, {n} streams, {wall:.1f} s)", flush=True)
        print(f"  idle: {idle / 1e6:.3f} M/s")
        print(f"instructions per relayed chunk: {(per_stream[args.long] - per_stream[2]) / (args.long - 2) / 1e3:.1f} K")
        await stop()
    finally:
        up.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--socket", action="store_true", help="the bench upstream over a socket (default: in-process)")
    parser.add_argument("--gap-ms", type=int, default=30, help="ms between chunks with --socket (default 30)")
    parser.add_argument("--short", type=int, default=100, help="streams of 2 chunks (default 100)")
    parser.add_argument("--streams", type=int, default=20, help="long streams (default 20)")
    parser.add_argument("--long", type=int, default=102, help="chunks of a long stream (default 102)")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--inner", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        import uvloop

        uvloop.run(inner(args, Path(args.inner)))
        return 0
    out = Path(tempfile.mkdtemp(prefix="respan-chunk-callgrind-"))
    argv = [instr.VALGRIND, "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}/callgrind.out.%p",
            "--dump-instr=no", "--dump-line=no", sys.executable, __file__, *sys.argv[1:], "--inner", str(out)]
    print(f"chunk_instr: {run.machine()}; callgrind dumps in {out}", flush=True)
    with open(out / "stderr.log", "wb") as log:
        done = subprocess.run(argv, stderr=log)
    if done.returncode:
        print((out / "stderr.log").read_text(errors="replace")[-3000:])
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
