"""The gateway's metrics: counters, gauges and histograms with labels, exposed by ``prometheus_client``.

One :class:`Registry` per gateway (``gateway.metrics``): each plugin adds its own series at start-up
(the ``metrics`` plugin the per-request series and ``GET /metrics``, ``logging`` its writer's gauges),
so no plugin looks another up. The interface is what a plugin needs: ``counter``/``gauge``/
``histogram`` (``.inc``/``.set``/``.observe`` with a tuple of label values) and ``render``.

Updates stay in this process's memory, as plain dict operations (about 0.2 us; a ``prometheus_client``
``labels(...).inc()`` costs 5-10 times that, and in its multiprocess mode each one also writes an
mmap'ed file: ``bench/metrics_ops.py``). ``prometheus_client`` does the rest:

- one process: :meth:`Registry.render` hands the values to its exposition (``generate_latest``);
- several worker processes (``respan-gateway serve --workers N`` sets ``PROMETHEUS_MULTIPROC_DIR``
  before the workers start): :meth:`Registry.flush` writes this process's values into the library's
  per-process files (its multiprocess mode: absolute values, so a flush is idempotent), the
  ``metrics`` plugin flushes every ``[metrics] flush_interval`` and right before a scrape, and
  :meth:`Registry.render` reads every worker's files through its ``MultiProcessCollector``: a scrape
  of any worker reports the whole process group (the other workers as of their last flush).

Gauges in multiprocess mode are combined per ``multiprocess_mode`` (``prometheus_client``'s: ``livesum``
by default, the sum over the living workers; ``liveall`` keeps one series per ``pid``; ``sum``/``max``/
``min`` also count exited workers). A gauge read from ``source()`` is read by each worker when it flushes.
"""

from __future__ import annotations

import bisect
import glob
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import values as _pc_values
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric as _Family
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.utils import floatToGoString

LabelValues = tuple[str, ...]
#: The environment variable of ``prometheus_client``'s multiprocess mode: a folder shared by the workers.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: ``prometheus_client``'s gauge modes (``Gauge(multiprocess_mode=...)``).
GAUGE_MODES = frozenset({"all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum", "mostrecent", "livemostrecent"})


class Metric:
    kind = "untyped"
    #: Most label sets this metric holds (set by the registry); a new one beyond it is counted under
    #: all-"other" labels, so that no input can grow the exposition without bound.
    max_series = 2000

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self.values: dict[LabelValues, Any] = {}
        # Multiprocess mode: what the last flush wrote, per label set (a histogram: its count).
        self.flushed: dict[LabelValues, Any] = {}

    def _bounded(self, labels: LabelValues) -> LabelValues:
        if labels in self.values or len(self.values) < self.max_series:
            return labels
        return ("other",) * len(labels)

    def same_shape(self, other: Metric) -> bool:
        return type(self) is type(other) and self.label_names == other.label_names

    def family(self) -> _Family:  # pragma: no cover - each kind has its own
        raise NotImplementedError


class Counter(Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        super().__init__(name, help, labels)
        self.values: dict[LabelValues, float] = {}

    def inc(self, labels: LabelValues = (), amount: float = 1.0) -> None:
        values = self.values
        value = values.get(labels)
        if value is None:  # a new series: within the bound, else "other" (as _bounded, inlined: per request)
            labels = self._bounded(labels)
            value = values.get(labels, 0.0)
        values[labels] = value + amount

    def family(self) -> _Family:
        family = CounterMetricFamily(self.name, self.help, labels=self.label_names)
        for labels, value in self.values.items():
            family.add_metric(labels, value)
        return family


class Gauge(Metric):
    """A gauge set directly, or read from ``source()`` at scrape (or flush) time."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = (), source: Callable[[], float] | None = None,
                 multiprocess_mode: str = "livesum") -> None:
        if multiprocess_mode not in GAUGE_MODES:
            raise ValueError(f"gauge `{name}`: multiprocess_mode must be one of {', '.join(sorted(GAUGE_MODES))}")
        super().__init__(name, help, labels)
        self.values: dict[LabelValues, float] = {}
        self.source = source
        self.multiprocess_mode = multiprocess_mode

    def set(self, value: float, labels: LabelValues = ()) -> None:
        self.values[self._bounded(labels)] = value

    def inc(self, amount: float = 1.0, labels: LabelValues = ()) -> None:
        values = self.values
        value = values.get(labels)
        if value is None:
            labels = self._bounded(labels)
            value = values.get(labels, 0.0)
        values[labels] = value + amount

    def current(self) -> dict[LabelValues, float]:
        return {(): float(self.source())} if self.source is not None else self.values

    def same_shape(self, other: Metric) -> bool:
        return super().same_shape(other) and self.multiprocess_mode == getattr(other, "multiprocess_mode", None)

    def family(self) -> _Family:
        family = GaugeMetricFamily(self.name, self.help, labels=self.label_names)
        for labels, value in self.current().items():
            family.add_metric(labels, value)
        return family


class Histogram(Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = (), buckets: Iterable[float] = ()) -> None:
        super().__init__(name, help, labels)
        self.buckets = sorted(float(b) for b in buckets)
        # labels -> [count per bucket (non-cumulative, last = +Inf), sum, count]
        self.values: dict[LabelValues, list] = {}

    def observe(self, value: float, labels: LabelValues = ()) -> None:
        slot = self.values.get(labels)
        if slot is None:
            labels = self._bounded(labels)
            slot = self.values.get(labels)
            if slot is None:
                slot = self.values[labels] = [[0] * (len(self.buckets) + 1), 0.0, 0]
        slot[0][bisect.bisect_left(self.buckets, value)] += 1
        slot[1] += value
        slot[2] += 1

    def same_shape(self, other: Metric) -> bool:
        return super().same_shape(other) and self.buckets == getattr(other, "buckets", None)

    def family(self) -> _Family:
        family = HistogramMetricFamily(self.name, self.help, labels=self.label_names)
        bounds = [*(floatToGoString(b) for b in self.buckets), "+Inf"]
        for labels, (counts, total, _) in self.values.items():
            running, buckets = 0, []
            for bound, n in zip(bounds, counts):
                running += n
                buckets.append((bound, running))
            family.add_metric(labels, buckets, total)
        return family


class Registry:
    """The series of one gateway, in the order they were added; a name is added once.

    ``previous``: the registry of the gateway this one replaces (a config reload): a metric added
    again with the same kind, labels (and buckets, gauge mode) keeps its values, so counters do not
    restart at a reload.
    """

    def __init__(self, max_series: int = Metric.max_series, previous: Registry | None = None) -> None:
        self.metrics: dict[str, Counter | Gauge | Histogram] = {}
        self.max_series = max_series
        self._previous = previous.metrics if previous is not None else {}
        path = os.environ.get(MULTIPROC_DIR_ENV, "")
        #: The folder of the multiprocess mode; "" = one process (each scrape shows this process only).
        self.multiprocess_dir = path if path and os.path.isdir(path) else ""

    @property
    def multiprocess(self) -> bool:
        return bool(self.multiprocess_dir)

    def bound(self, max_series: int) -> None:
        """Most label sets each metric holds (``[metrics] max_series``), for every metric, now and later."""
        self.max_series = max_series
        for metric in self.metrics.values():
            metric.max_series = max_series

    def _add(self, metric: Any) -> Any:
        if metric.name in self.metrics:
            raise ValueError(f"metric `{metric.name}` is already registered")
        old = self._previous.get(metric.name)
        if old is not None and metric.same_shape(old):
            metric.values = old.values  # shared: the retiring gateway's last updates still count
        metric.max_series = self.max_series
        self.metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labels: tuple[str, ...] = ()) -> Counter:
        return self._add(Counter(name, help, labels))

    def gauge(self, name: str, help: str, labels: tuple[str, ...] = (), source: Callable[[], float] | None = None,
              multiprocess_mode: str = "livesum") -> Gauge:
        """A gauge set by its owner, or read from ``source()`` at scrape time. ``multiprocess_mode``:
        how the workers' values combine when there are several (see the module's docstring)."""
        return self._add(Gauge(name, help, labels, source, multiprocess_mode))

    def histogram(self, name: str, help: str, labels: tuple[str, ...] = (), buckets: Iterable[float] = ()) -> Histogram:
        return self._add(Histogram(name, help, labels, buckets))

    # -- exposition -----------------------------------------------------------------------------
    def collect(self) -> Iterator[_Family]:
        """This process's series (``prometheus_client``'s collector interface)."""
        for metric in self.metrics.values():
            yield metric.family()

    def render(self) -> bytes:
        """The Prometheus text exposition (0.0.4): of this process, or of every worker in multiprocess mode."""
        registry = CollectorRegistry(auto_describe=False)
        if self.multiprocess:
            self.flush()
            _forget_dead_workers(self.multiprocess_dir)
            MultiProcessCollector(registry, self.multiprocess_dir)
        else:
            registry.register(self)
        return generate_latest(registry)

    # -- multiprocess mode ----------------------------------------------------------------------
    def flush(self) -> None:
        """Write this process's values into its multiprocess files (nothing in one-process mode).
        A series unchanged since the last flush costs one comparison."""
        if not self.multiprocess:
            return
        for metric in self.metrics.values():
            flushed = metric.flushed
            if isinstance(metric, Counter):
                sample = metric.name if metric.name.endswith("_total") else metric.name + "_total"
                family = sample[:-len("_total")]
                for labels, value in list(metric.values.items()):
                    if flushed.get(labels) != value:
                        _write("counter", family, sample, metric.label_names, labels, metric.help, value)
                        flushed[labels] = value
            elif isinstance(metric, Gauge):
                try:
                    current = metric.current()
                except Exception:  # noqa: BLE001 - a broken source must not stop the others' flush
                    continue
                for labels, value in list(current.items()):
                    if flushed.get(labels) != value:
                        _write("gauge", metric.name, metric.name, metric.label_names, labels, metric.help, value,
                               metric.multiprocess_mode)
                        flushed[labels] = value
            else:
                names = (*metric.label_names, "le")
                bounds = [*(floatToGoString(b) for b in metric.buckets), "+Inf"]
                for labels, (counts, total, count) in list(metric.values.items()):
                    if flushed.get(labels) == count:  # no observation since: nothing moved
                        continue
                    for bound, n in zip(bounds, counts):
                        _write("histogram", metric.name, metric.name + "_bucket", names, (*labels, bound), metric.help, n)
                    _write("histogram", metric.name, metric.name + "_sum", metric.label_names, labels, metric.help, total)
                    flushed[labels] = count

    def close(self) -> None:
        """At the end of the process: a last flush, and this process's live gauges leave the group's sums."""
        if self.multiprocess:
            self.flush()
            mark_process_dead(os.getpid(), self.multiprocess_dir)


# -- the process's multiprocess files (prometheus_client's values), shared by its registries ----------

_value_class: Any = None
# (type, family, sample, label names, label values, gauge mode) -> [value object, last value written]
_written: dict[tuple, list] = {}


def _values() -> Any:
    """The process's one mmap'ed value class: the library's own when it chose multiprocess mode at
    import (so that both write through one set of open files), else one made now (e.g. a worker
    forked from a parent that imported the library before ``PROMETHEUS_MULTIPROC_DIR`` was set)."""
    global _value_class
    if _value_class is None:
        cls = _pc_values.ValueClass
        _value_class = cls if getattr(cls, "_multiprocess", False) else _pc_values.MultiProcessValue()
    return _value_class


def _write(typ: str, family: str, sample: str, names: tuple[str, ...], labels: LabelValues, help: str,
           value: float, mode: str = "") -> None:
    key = (typ, family, sample, names, labels, mode)
    slot = _written.get(key)
    if slot is None:
        slot = _written[key] = [_values()(typ, family, sample, names, labels, help, multiprocess_mode=mode), None]
    if slot[1] != value:
        slot[0].set(float(value))
        slot[1] = value


def _forget_dead_workers(path: str) -> None:
    """``mark_process_dead`` for every worker whose live gauges are still there but which is gone
    (killed, or restarted by its server): its in-flight requests, queue depths... no longer count."""
    pids = {os.path.basename(f).rsplit("_", 1)[-1][:-3] for f in glob.glob(os.path.join(path, "gauge_live*_*.db"))}
    for pid in pids:
        if pid.isdigit() and not _alive(int(pid)):
            mark_process_dead(int(pid), path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

__all__ = ["CONTENT_TYPE", "MULTIPROC_DIR_ENV", "Counter", "Gauge", "Histogram", "Registry"]
