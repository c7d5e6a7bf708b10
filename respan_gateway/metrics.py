"""The gateway's metrics: counters, gauges and histograms with labels, in the Prometheus text format (0.0.4).

One :class:`Registry` per gateway (``gateway.metrics``): each plugin adds its own series at start-up
(the ``metrics`` plugin the per-request series and ``GET /metrics``, ``logging`` its writer's gauges),
so no plugin looks another up. Small on purpose: one process, one event loop, no locks; updates are
dict operations. The interface is what a plugin needs: ``counter``/``gauge``/``histogram`` and ``render``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable
from typing import Any

LabelValues = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Iterable[str], values: Iterable[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class Metric:
    kind = "untyped"
    #: Most label sets this metric holds (set by the registry); a new one beyond it is counted under
    #: all-"other" labels, so that no input can grow the exposition without bound.
    max_series = 2000

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help, labels
        self.values: dict[LabelValues, Any] = {}

    def _bounded(self, labels: LabelValues) -> LabelValues:
        if labels in self.values or len(self.values) < self.max_series:
            return labels
        return ("other",) * len(labels)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        super().__init__(name, help, labels)
        self.values: dict[LabelValues, float] = {}

    def inc(self, labels: LabelValues = (), amount: float = 1.0) -> None:
        labels = self._bounded(labels)
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self) -> list[str]:
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in self.values.items()]


class Gauge(Metric):
    """A gauge set directly, or read from ``source()`` at scrape time."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = (), source: Callable[[], float] | None = None) -> None:
        super().__init__(name, help, labels)
        self.values: dict[LabelValues, float] = {}
        self.source = source

    def set(self, value: float, labels: LabelValues = ()) -> None:
        self.values[self._bounded(labels)] = value

    def inc(self, amount: float = 1.0, labels: LabelValues = ()) -> None:
        labels = self._bounded(labels)
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self) -> list[str]:
        values = {(): float(self.source())} if self.source is not None else self.values
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in values.items()]


class Histogram(Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = (), buckets: Iterable[float] = ()) -> None:
        super().__init__(name, help, labels)
        self.buckets = sorted(float(b) for b in buckets)
        # labels -> [count per bucket (non-cumulative, last = +Inf), sum, count]
        self.values: dict[LabelValues, list] = {}

    def observe(self, value: float, labels: LabelValues = ()) -> None:
        labels = self._bounded(labels)
        slot = self.values.get(labels)
        if slot is None:
            slot = self.values[labels] = [[0] * (len(self.buckets) + 1), 0.0, 0]
        slot[0][bisect.bisect_left(self.buckets, value)] += 1
        slot[1] += value
        slot[2] += 1

    def render(self) -> list[str]:
        lines = self.header()
        for labels, (counts, total, count) in self.values.items():
            running = 0
            for bound, n in zip([*self.buckets, math.inf], counts):
                running += n
                le = f'le="{_num(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, labels, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, labels)} {_num(total)}")
            lines.append(f"{self.name}_count{_labels(self.label_names, labels)} {count}")
        return lines


class Registry:
    """The series of one gateway, rendered in the order they were added; a name is added once."""

    def __init__(self, max_series: int = Metric.max_series) -> None:
        self.metrics: dict[str, Counter | Gauge | Histogram] = {}
        self.max_series = max_series

    def bound(self, max_series: int) -> None:
        """Most label sets each metric holds (``[metrics] max_series``), for every metric, now and later."""
        self.max_series = max_series
        for metric in self.metrics.values():
            metric.max_series = max_series

    def _add(self, metric: Counter | Gauge | Histogram) -> None:
        if metric.name in self.metrics:
            raise ValueError(f"metric `{metric.name}` is already registered")
        metric.max_series = self.max_series
        self.metrics[metric.name] = metric

    def counter(self, name: str, help: str, labels: tuple[str, ...] = ()) -> Counter:
        metric = Counter(name, help, labels)
        self._add(metric)
        return metric

    def gauge(self, name: str, help: str, labels: tuple[str, ...] = (), source: Callable[[], float] | None = None) -> Gauge:
        """A gauge set by its owner, or read from ``source()`` at scrape time."""
        metric = Gauge(name, help, labels, source)
        self._add(metric)
        return metric

    def histogram(self, name: str, help: str, labels: tuple[str, ...] = (), buckets: Iterable[float] = ()) -> Histogram:
        metric = Histogram(name, help, labels, buckets)
        self._add(metric)
        return metric

    def render(self) -> bytes:
        lines: list[str] = []
        for metric in self.metrics.values():
            lines.extend(metric.render())
        return ("\n".join(lines) + "\n").encode()


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

__all__ = ["CONTENT_TYPE", "Counter", "Gauge", "Histogram", "Registry"]
