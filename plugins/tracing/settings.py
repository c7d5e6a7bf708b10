"""The ``[tracing]`` section (see README.md beside this file)."""

from __future__ import annotations

from respan_gateway import Settings


class TracingSettings(Settings):
    # Where spans go: the OTLP/HTTP endpoint of a collector (as OTEL_EXPORTER_OTLP_ENDPOINT, e.g.
    # "http://otel-collector:4318"; "/v1/traces" is added unless the URL already ends with it).
    # "" (the default) = tracing is off: the plugin puts nothing in the pipeline.
    otlp_endpoint: str = ""
    # Headers of every export request (a collector's or a vendor's API key): redacted from the logs.
    headers: dict[str, str] = {}
    # The `service.name` resource attribute of every span.
    service_name: str = "respan-gateway"
    # Share of the traces this gateway starts that are kept (0..1); a client's `traceparent` decides
    # for its own traces (its sampled flag).
    sample_ratio: float = 1.0
    # The batch processor: spans wait in memory (at most max_queue_size; beyond, they are dropped,
    # never the request) and are sent every schedule_delay seconds, by a thread off the request path.
    schedule_delay: float = 5.0
    max_queue_size: int = 2048
    max_export_batch_size: int = 512
    # Longest one export may take (seconds); also how long shutdown waits for the last one.
    export_timeout: float = 10.0
