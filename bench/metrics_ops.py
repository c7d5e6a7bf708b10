"""The cost of one metrics update: the gateway's registry against prometheus_client's own metrics.

Not a test: prints microseconds per operation (best of 5 runs of 200k). Run it alone:
``.venv/bin/python bench/metrics_ops.py``. Results in docs/performance.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import timeit

N = 200_000
LABELS = ("chat", "gpt-4o-mini", "openai", "200")
BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]

CASES = {
    "registry counter.inc": ("from respan_gateway.metrics import Registry\n"
                             "c = Registry().counter('x_total', 'x', ('a','b','c','d'))", "c.inc(L)"),
    "registry histogram.observe": ("from respan_gateway.metrics import Registry\n"
                                   f"h = Registry().histogram('h', 'h', ('a','b'), {BUCKETS})", "h.observe(0.3, L[1:3])"),
    "prometheus_client counter.labels().inc": ("import prometheus_client as p\n"
                                               "c = p.Counter('x', 'x', ('a','b','c','d'), registry=None)", "c.labels(*L).inc()"),
    "prometheus_client histogram.labels().observe": ("import prometheus_client as p\n"
                                                     f"h = p.Histogram('h', 'h', ('a','b'), buckets={BUCKETS}, registry=None)",
                                                     "h.labels(*L[1:3]).observe(0.3)"),
}


def run(multiprocess: bool) -> None:
    for name, (setup, stmt) in CASES.items():
        best = min(timeit.repeat(stmt, setup=f"L = {LABELS!r}\n{setup}", number=N, repeat=5))
        print(f"  {name:48s} {best / N * 1e6:6.2f} us")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        run(multiprocess=True)
        sys.exit(0)
    print("one process:")
    run(multiprocess=False)
    with tempfile.TemporaryDirectory() as folder:
        print("PROMETHEUS_MULTIPROC_DIR set (prometheus_client writes an mmap'ed file per update; the registry does not):")
        subprocess.run([sys.executable, __file__, "--child"], env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": folder}, check=True)
        from respan_gateway.metrics import Registry

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        r = Registry()
        c = r.counter("requests_total", "x", ("a", "b", "c", "d"))
        h = r.histogram("latency", "h", ("a", "b"), BUCKETS)
        for i in range(2000):  # the max_series bound: 2000 label sets
            c.inc(("chat", f"m{i}", "openai", "200"))
            h.observe(0.3, (f"m{i}", "openai"))
        r.flush()
        best = min(timeit.repeat(r.flush, number=20, repeat=3)) / 20
        print(f"  registry flush, 2000 counter + 2000 histogram series, unchanged: {best * 1e3:6.2f} ms")
        for i in range(2000):
            c.inc(("chat", f"m{i}", "openai", "200"))
        changed = min(timeit.repeat(lambda: [c.inc(("chat", f"m{i}", "openai", "200")) for i in range(2000)] and r.flush(),
                                    number=5, repeat=3)) / 5
        print(f"  registry flush, 2000 counter series changed (incs included): {changed * 1e3:6.2f} ms")
