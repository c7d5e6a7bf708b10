"""Metrics: ``GET /metrics`` in the Prometheus text format.

Per-request series come from the log records (the ``logging`` plugin computes latency, time to first
token, tokens, cost and attempts once; this plugin subscribes to its finished records), so metrics and
logs agree. Without the logging plugin only the in-flight gauge and process series are exported.
See README.md beside this file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response

from respan_gateway import Call, CallNext, Chunk, NotFound, Result, Settings, StreamResult, hookimpl

from .prometheus import CONTENT_TYPE, Counter, Gauge, Histogram, Registry

log = structlog.get_logger("respan_gateway.metrics")

LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
OVERHEAD_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1]
REQUEST_LABELS = ("endpoint", "model", "provider", "status_code")
MODEL_LABELS = ("model", "provider")


OTHER = "other"  # the label value of every model / provider / status the config does not name


class MetricsSettings(Settings):
    # Require a gateway API key on GET /metrics (default: open, like /healthz; keep it off the internet).
    require_auth: bool = False
    # Most label sets one series may hold; later new ones are counted under all-"other" labels.
    max_series: int = 2000
    latency_buckets: list[float] = msgspec.field(default_factory=lambda: list(LATENCY_BUCKETS))
    overhead_buckets: list[float] = msgspec.field(default_factory=lambda: list(OVERHEAD_BUCKETS))


class GatewayMetrics:
    """The middleware (counts requests in flight) and the owner of the registry."""

    def __init__(self, settings: MetricsSettings, gateway: Any) -> None:
        self.settings = settings
        self.gateway = gateway
        r = self.registry = Registry(settings.max_series)
        self.in_flight = r.add(Gauge("respan_gateway_requests_in_flight", "Requests being answered (streams until they end)."))
        self.requests = r.add(Counter("respan_gateway_requests_total", "Requests answered, by final model, provider and status.", REQUEST_LABELS))
        self.errors = r.add(Counter("respan_gateway_request_errors_total", "Requests that ended with a status >= 400 (499 = client left).", REQUEST_LABELS))
        self.latency = r.add(Histogram("respan_gateway_request_duration_seconds", "Request latency, first byte in to last byte out.", MODEL_LABELS, settings.latency_buckets))
        self.overhead = r.add(Histogram("respan_gateway_overhead_seconds", "Time spent in the gateway itself, upstream attempts excluded.", ("endpoint",), settings.overhead_buckets))
        self.ttft = r.add(Histogram("respan_gateway_time_to_first_token_seconds", "Streams: time to the first chunk.", MODEL_LABELS, settings.latency_buckets))
        self.tokens = r.add(Counter("respan_gateway_tokens_total", "Tokens, by type (prompt, completion, cache_read, cache_write).", (*MODEL_LABELS, "type")))
        self.cost = r.add(Counter("respan_gateway_cost_usd_total", "Cost in USD at catalog prices.", MODEL_LABELS))
        self.attempts = r.add(Counter("respan_gateway_upstream_attempts_total", "Upstream attempts (retries and fallbacks included).", (*MODEL_LABELS, "status_code")))
        self.cache_hits = r.add(Counter("respan_gateway_cache_hits_total", "Requests answered from the response cache.", ("endpoint",)))
        self._logging: Any = None

    async def startup(self) -> None:
        self._logging = dict(self.gateway.middlewares).get("logging")
        if self._logging is None or not hasattr(self._logging, "subscribe"):
            log.warning("metrics_without_logging", message="per-request metrics need the logging plugin in the pipeline")
            return
        self._logging.subscribe(self.observe)
        writer = self._logging.writer
        r = self.registry
        r.add(Gauge("respan_gateway_log_queue_depth", "Log records in memory, not yet written.", source=lambda: len(writer.queue)))
        r.add(Gauge("respan_gateway_log_spill_pending", "Log records in spill files, waiting for the store.", source=lambda: writer.spill.pending))
        r.add(Gauge("respan_gateway_log_store_up", "1 when the log store accepts writes.", source=lambda: 1.0 if writer.store_up else 0.0))
        r.add(Gauge("respan_gateway_log_records_written_total", "Log records written to the store by this process.", source=lambda: writer.written))
        r.add(Gauge("respan_gateway_log_records_spilled_total", "Log records written to a spill file by this process.", source=lambda: writer.spilled))
        r.add(Gauge("respan_gateway_log_records_quarantined_total", "Log records the store refused, set aside in a quarantine file.", source=lambda: writer.quarantined))

    # Labels are values the config names: a client's made-up model name is "other", never a new series.
    def _model(self, model: str | None) -> str:
        if not model or model == "respan/cache" or self.gateway.catalog.entry(model) is not None:
            return model or ""
        return OTHER

    def _provider(self, provider: str | None) -> str:
        return "" if not provider else provider if provider in self.gateway.providers else OTHER

    def observe(self, record: Any, call: Call) -> None:
        model, provider = self._model(record.model), self._provider(record.provider_id)
        labels = (record.endpoint or "", model, provider, _status(record.status_code))
        self.requests.inc(labels)
        if record.status_code >= 400:
            self.errors.inc(labels)
        if record.latency is not None:
            self.latency.observe(record.latency, (model, provider))
        if record.gateway_overhead is not None:
            self.overhead.observe(record.gateway_overhead, (record.endpoint or "",))
        if record.time_to_first_token is not None:
            self.ttft.observe(record.time_to_first_token, (model, provider))
        for kind, n in (("prompt", record.prompt_tokens), ("completion", record.completion_tokens),
                        ("cache_read", record.prompt_cache_hit_tokens), ("cache_write", record.prompt_cache_creation_tokens)):
            if n:
                self.tokens.inc((model, provider, kind), n)
        if record.cost:
            self.cost.inc((model, provider), record.cost)
        if record.cache_hit:
            self.cache_hits.inc((record.endpoint or "",))
        for attempt in call.attempts:
            self.attempts.inc((self._model(attempt.model), self._provider(attempt.provider), _status(attempt.status)))

    async def __call__(self, call: Call, call_next: CallNext) -> Result:
        self.in_flight.inc(1)
        try:
            result = await call_next(call)
        except BaseException:
            self.in_flight.inc(-1)
            raise
        if isinstance(result, StreamResult):
            result.chunks = self._track(result.chunks)
        else:
            self.in_flight.inc(-1)
        return result

    async def _track(self, chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            self.in_flight.inc(-1)
            try:
                await chunks.aclose()  # type: ignore[attr-defined]
            except Exception:
                pass


def _status(status: int | None) -> str:
    return "" if not status else str(status) if 100 <= status <= 599 else OTHER


async def metrics_endpoint(request: Request) -> Response:
    gateway = request.app.state.gateway
    metrics = dict(gateway.middlewares).get("metrics")
    if metrics is None:
        raise NotFound("metrics are off: the `metrics` middleware is not in the pipeline")
    if metrics.settings.require_auth:
        await gateway.authenticate(request.headers)
    return Response(metrics.registry.render(), media_type=CONTENT_TYPE)


@hookimpl
def register_middlewares(register: Any) -> None:
    # First in the chain: in-flight counts every request, rejected ones included.
    register("metrics", GatewayMetrics, order=50, settings=MetricsSettings)


@hookimpl
def register_routes(register: Any) -> None:
    register("/metrics", metrics_endpoint, methods=["GET"])


__all__ = ["GatewayMetrics", "MetricsSettings"]
