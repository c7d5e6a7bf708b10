"""Metrics: ``GET /metrics`` in the Prometheus text format.

The per-request series come from what the core says happened to each call (``call.outcome``: who
answered, status, durations, usage, cost, cache), through an observer, so metrics and logs agree
without either knowing the other. The series live in the gateway's registry (``gateway.metrics``),
where other plugins add their own (logging its writer's gauges); this plugin serves them all and
counts the requests in flight with a middleware. See README.md beside this file.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response

from respan_gateway import Call, CallNext, Gateway, NotFound, Result, Settings, StreamResult, hookimpl
from respan_gateway.hookspecs import RegisterMiddleware, RegisterObserver, RegisterRoute
from respan_gateway.metrics import CONTENT_TYPE

LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
OVERHEAD_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1]
REQUEST_LABELS = ("endpoint", "model", "provider", "status_code")
MODEL_LABELS = ("model", "provider")
TOKEN_TYPES = ("prompt", "completion", "cache_read", "cache_write")


log = structlog.get_logger("respan_gateway.metrics")
OTHER = "other"  # the label value of every model / provider / status the config does not name


class MetricsSettings(Settings):
    # Require a gateway API key on GET /metrics (default: open, like /healthz; keep it off the internet).
    require_auth: bool = False
    # Most label sets one series may hold; later new ones are counted under all-"other" labels.
    max_series: int = 2000
    latency_buckets: list[float] = msgspec.field(default_factory=lambda: list(LATENCY_BUCKETS))
    overhead_buckets: list[float] = msgspec.field(default_factory=lambda: list(OVERHEAD_BUCKETS))
    # With several workers (multiprocess mode): seconds between two writes of this worker's values to
    # the files every worker reads at a scrape; a scrape shows the other workers as of their last one.
    flush_interval: float = 1.0


class InFlight:
    """The middleware: requests being answered (streams until they end), rejected ones included."""

    def __init__(self, settings: MetricsSettings, gateway: Gateway) -> None:
        self.gauge = gateway.metrics.gauge("respan_gateway_requests_in_flight", "Requests being answered (streams until they end).")

    async def __call__(self, call: Call, call_next: CallNext) -> Result:
        self.gauge.inc(1)
        try:
            result = await call_next(call)
        except BaseException:
            self.gauge.inc(-1)
            raise
        if isinstance(result, StreamResult):  # until the stream has ended (Gateway.finish calls it)
            call.on_finish.append(self._end)
        else:
            self.gauge.inc(-1)
        return result

    def _end(self) -> None:
        self.gauge.inc(-1)


class RequestMetrics:
    """The observer: the per-request series, from each finished call's outcome."""

    def __init__(self, settings: MetricsSettings, gateway: Gateway) -> None:
        self.settings = settings
        self.gateway = gateway
        r = gateway.metrics
        r.bound(settings.max_series)
        self.requests = r.counter("respan_gateway_requests_total", "Requests answered, by final model, provider and status.", REQUEST_LABELS)
        self.errors = r.counter("respan_gateway_request_errors_total", "Requests that ended with a status >= 400 (499 = client left).", REQUEST_LABELS)
        self.latency = r.histogram("respan_gateway_request_duration_seconds", "Request latency, first byte in to last byte out.", MODEL_LABELS, settings.latency_buckets)
        self.overhead = r.histogram("respan_gateway_overhead_seconds", "Time spent in the gateway itself, upstream attempts excluded.", ("endpoint",), settings.overhead_buckets)
        self.ttft = r.histogram("respan_gateway_time_to_first_token_seconds", "Streams: time to the first chunk.", MODEL_LABELS, settings.latency_buckets)
        self.tokens = r.counter("respan_gateway_tokens_total", "Tokens, by type (prompt, completion, cache_read, cache_write).", (*MODEL_LABELS, "type"))
        self.cost = r.counter("respan_gateway_cost_usd_total", "Cost in USD at catalog prices.", MODEL_LABELS)
        self.attempts = r.counter("respan_gateway_upstream_attempts_total", "Upstream attempts (retries and fallbacks included).", (*MODEL_LABELS, "status_code"))
        self.cache_hits = r.counter("respan_gateway_cache_hits_total", "Requests answered from the response cache.", ("endpoint",))
        # (endpoint, model, provider, status) as the outcome says -> the label tuples of its series:
        # built once per combination, not per request (bounded: a made-up model is one more key).
        self._labels: dict[tuple, tuple[Any, ...]] = {}
        self._attempt_labels: dict[tuple, tuple[str, str, str]] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        if self.gateway.metrics.multiprocess:  # several workers: publish this one's values now and then
            self._flusher = asyncio.create_task(self._flush_every(self.settings.flush_interval))

    async def shutdown(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self.gateway.metrics.flush()

    async def _flush_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.gateway.metrics.flush()
            except Exception:  # a full disk must not end the loop: the next flush tries again
                log.exception("metrics_flush_failed")

    def observe(self, call: Call) -> None:
        o = call.outcome
        key = (call.kind, o.model, o.provider, o.status)
        found = self._labels.get(key)
        if found is None:
            found = self._series_labels(key)
        labels, model_provider, endpoint, token_labels = found
        self.requests.inc(labels)
        if o.status >= 400:
            self.errors.inc(labels)
        self.latency.observe(o.latency, model_provider)
        self.overhead.observe(o.overhead, endpoint)
        if o.time_to_first_token is not None:
            self.ttft.observe(o.time_to_first_token, model_provider)
        if o.usage is not None:
            u = o.usage
            for token_type, n in zip(token_labels, (u.prompt_tokens, u.completion_tokens, u.cache_read_tokens,
                                                    u.cache_write_tokens)):
                if n:
                    self.tokens.inc(token_type, n)
        if o.cost:
            self.cost.inc(model_provider, o.cost)
        if o.cache_hit:
            self.cache_hits.inc(endpoint)
        for attempt in call.attempts:
            attempt_key = (attempt.model, attempt.provider, attempt.status)
            attempt_labels = self._attempt_labels.get(attempt_key)
            if attempt_labels is None:
                attempt_labels = (self._model(attempt.model), self._provider(attempt.provider), _status(attempt.status))
                if len(self._attempt_labels) < 4 * self.settings.max_series:
                    self._attempt_labels[attempt_key] = attempt_labels
            self.attempts.inc(attempt_labels)

    def _series_labels(self, key: tuple) -> tuple[Any, ...]:
        """(requests/errors labels, (model, provider), (endpoint,), the tokens series' labels by type)."""
        kind, model, provider, status = key
        model_provider = (self._model(model), self._provider(provider))
        tokens = tuple((*model_provider, t) for t in TOKEN_TYPES)
        found = ((kind, *model_provider, _status(status)), model_provider, (kind,), tokens)
        if len(self._labels) < 4 * self.settings.max_series:
            self._labels[key] = found
        return found

    # Labels are values the config names: a client's made-up model name is "other", never a new series.
    def _model(self, model: str | None) -> str:
        if not model or model == "respan/cache" or self.gateway.catalog.entry(model) is not None:
            return model or ""
        return OTHER

    def _provider(self, provider: str | None) -> str:
        return "" if not provider else provider if provider in self.gateway.providers else OTHER


def _status(status: int | None) -> str:
    return "" if not status else str(status) if 100 <= status <= 599 else OTHER


async def metrics_endpoint(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    metrics = dict(gateway.observers).get("metrics")  # this plugin's own observer
    if not isinstance(metrics, RequestMetrics):
        raise NotFound("metrics are off: the `metrics` observer is not running")
    if metrics.settings.require_auth:
        await gateway.authenticate(request.headers)
    return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)


@hookimpl
def register_middlewares(register: RegisterMiddleware) -> None:
    # First in the chain: in-flight counts every request, rejected ones included.
    register("metrics", InFlight, order=50, settings=MetricsSettings)


@hookimpl
def register_observers(register: RegisterObserver) -> None:
    # needs_answer: until the provider adapters report usage themselves, the core reads the usage
    # behind the tokens and cost series from the answer (or estimates it from the answer).
    register("metrics", RequestMetrics, settings=MetricsSettings, needs_answer=True)


@hookimpl
def register_routes(register: RegisterRoute) -> None:
    register("/metrics", metrics_endpoint, methods=["GET"])


__all__ = ["InFlight", "MetricsSettings", "RequestMetrics"]
