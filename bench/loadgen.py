"""The bench's own asyncio clients: a closed-loop load generator (the fallback when wrk is missing) and
the streaming client (wrk cannot time chunks).

Both speak raw HTTP/1.1 over asyncio sockets on uvloop: no client library cost in the figures. The
load generator is measured against the bare upstream in every run (its direct figures), so a reader
sees that it can drive more than the gateway takes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

_DATA = b"data: "
_DONE = b"data: [DONE]"


def request_bytes(host: str, port: int, path: str, body: bytes, key: str | None) -> bytes:
    auth = f"authorization: Bearer {key}\r\n" if key else ""
    head = (f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
            f"{auth}content-length: {len(body)}\r\n\r\n")
    return head.encode() + body


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# -- closed-loop load (non-streaming) -------------------------------------------------------------

async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one response (content-length or chunked); return its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        end = lower.find(b"\r\n", at + 2)
        await reader.readexactly(int(head[at + 17:end]))
        return status
    while True:  # chunked
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return status


async def closed_loop(host: str, port: int, path: str, body: bytes, key: str | None,
                      concurrency: int, duration: float) -> dict:
    """``concurrency`` keep-alive connections, each sending the next request when the last answer ends."""
    payload = request_bytes(host, port, path, body, key)
    latencies: list[float] = []
    errors = [0, 0]  # [transport errors, status >= 400]
    deadline = time.perf_counter() + duration

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                writer.write(payload)
                status = await read_response(reader)
                latencies.append(time.perf_counter() - started)
                if status >= 400:
                    errors[1] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors[0] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    us = [x * 1e6 for x in latencies]
    return {"requests": len(latencies), "duration_us": int(elapsed * 1e6), "errors": errors[0],
            "status_errors": errors[1], "p50": percentile(us, 50), "p90": percentile(us, 90),
            "p99": percentile(us, 99), "max": max(us, default=float("nan")),
            "mean": sum(us) / len(us) if us else float("nan")}


# -- streams ----------------------------------------------------------------------------------------

@dataclass
class StreamTiming:
    ttfb: float = float("nan")  # seconds from the request's last byte written to the first SSE event
    arrivals: list[float] = field(default_factory=list)  # one per event, perf_counter()
    status: int = 0
    complete: bool = False
    error: str | None = None


async def one_stream(host: str, port: int, payload: bytes, timing: StreamTiming,
                     first_event: asyncio.Event | None = None) -> None:
    """Open a connection, send one streaming request, time each SSE event until ``[DONE]``, close."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        timing.error = f"connect: {exc}"
        return
    try:
        await stream_on(reader, writer, payload, timing, first_event)
    finally:
        writer.close()


async def stream_on(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes,
                    timing: StreamTiming, first_event: asyncio.Event | None = None) -> bool:
    """One streaming request on an open connection; True when the connection can be reused.

    The clock starts when the request is written (connection set-up is not in the time to first byte).
    Reading goes on to the end of the chunked body, so that the connection stays usable (keep-alive).
    """
    try:
        started = time.perf_counter()
        writer.write(payload)
        head = await reader.readuntil(b"\r\n\r\n")
        timing.status = int(head[9:12])
        chunked = b"chunked" in head.lower()
        tail = b""
        while True:
            piece = await reader.read(65536)
            now = time.perf_counter()
            if not piece:
                return False
            scan = tail + piece
            events = scan.count(_DATA) - tail.count(_DATA)
            if events:
                if not timing.arrivals:
                    timing.ttfb = now - started
                    if first_event is not None:
                        first_event.set()
                timing.arrivals.extend([now] * events)
            if _DONE in scan:
                timing.complete = True
            if timing.complete and (not chunked or scan.endswith(b"\r\n0\r\n\r\n") or scan.endswith(b"0\r\n\r\n")):
                return chunked
            tail = scan[-32:]
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        timing.error = f"{type(exc).__name__}: {exc}"
        return False


def stream_stats(timings: list[StreamTiming], gap: float) -> dict:
    """TTFB percentiles, and how chunks arrived: the median gap and the share that came in a burst.

    A chunk counts as burst when it arrives less than a fifth of the upstream's gap after the previous
    one (the upstream paces its chunks ``gap`` apart, so one-by-one delivery keeps the gap).
    """
    ok = [t for t in timings if t.complete and t.status == 200]
    ttfbs = [t.ttfb * 1e3 for t in ok]
    gaps = [b - a for t in ok for a, b in zip(t.arrivals, t.arrivals[1:])]
    burst = sum(1 for g in gaps if g < gap / 5)
    return {
        "streams": len(timings), "complete": len(ok),
        "errors": [t.error or f"status {t.status}" for t in timings if t not in ok][:3],
        "ttfb_p50_ms": percentile(ttfbs, 50), "ttfb_p99_ms": percentile(ttfbs, 99),
        "gap_p50_ms": percentile(gaps, 50) * 1e3, "burst_share": burst / len(gaps) if gaps else float("nan"),
        "events_per_stream": (sum(len(t.arrivals) for t in ok) / len(ok)) if ok else 0,
    }


async def streams_for(host: str, port: int, path: str, body: bytes, key: str | None,
                      concurrency: int, duration: float, stagger: float = 0.0) -> list[StreamTiming]:
    """``concurrency`` keep-alive connections, each streaming one answer after the other until ``duration``.

    Lane ``i`` starts ``i * stagger`` seconds late: with ``stagger`` = stream length / concurrency the
    requests arrive spread out, as from independent users, instead of all at once when the lanes'
    streams end together (which would time the gateway's queue, not its per-request cost).
    """
    payload = request_bytes(host, port, path, body, key)
    timings: list[StreamTiming] = []
    deadline = time.perf_counter() + duration

    async def lane(index: int) -> None:
        await asyncio.sleep(index * stagger)
        connection = None
        try:
            while time.perf_counter() < deadline:
                if connection is None:
                    connection = await asyncio.open_connection(host, port)
                timing = StreamTiming()
                timings.append(timing)
                if not await stream_on(*connection, payload, timing):
                    connection[1].close()
                    connection = None
                if timing.error:
                    return
        finally:
            if connection is not None:
                connection[1].close()

    await asyncio.gather(*(lane(i) for i in range(concurrency)))
    return timings


async def fixed_count(host: str, port: int, path: str, body: bytes, key: str | None,
                      concurrency: int, count: int) -> dict:
    """``count`` requests over ``concurrency`` keep-alive connections (for counts, not times: the
    instruction counts of ``bench/instr.py``); returns how many answered and how many failed."""
    payload = request_bytes(host, port, path, body, key)
    left = [count]
    done = [0, 0]  # [answered with status < 400, failed]

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while left[0] > 0:
                left[0] -= 1
                writer.write(payload)
                status = await read_response(reader)
                done[0 if status < 400 else 1] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            done[1] += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return {"requests": done[0], "failed": done[1]}
