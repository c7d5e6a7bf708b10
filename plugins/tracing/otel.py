"""Everything that uses OpenTelemetry: imported only when ``[tracing] otlp_endpoint`` is set.

Span tree of one request (attributes per the OpenTelemetry GenAI semantic conventions)::

    <client's span, from its traceparent>          (optional)
    └── "chat gpt-4o"      kind SERVER  the request, from the first stage to the last byte sent
        ├── "chat gpt-4o"  kind CLIENT  upstream attempt 1 (e.g. 429)
        └── "chat gpt-4o"  kind CLIENT  upstream attempt 2 (its traceparent went upstream)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import msgspec
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import respan_gateway
from respan_gateway import Call, CallNext, Chunk, Gateway, GatewayError, Result, StreamResult, aclose
from respan_gateway.log import add_secrets

from .settings import TracingSettings

#: The call's request span, between the middleware that opens it and the observer that ends it.
STATE_KEY = "respan_plugins.tracing"

# gen_ai.operation.name per endpoint kind (the Responses API and Anthropic Messages are chats).
OPERATIONS = {"chat": "chat", "embeddings": "embeddings", "responses": "chat", "anthropic_messages": "chat"}
# gen_ai.provider.name: the conventions' well-known values for the bundled adapter types; any other
# type (openai_compatible, a third party's) is named as configured.
PROVIDER_NAMES = {"openai": "openai", "azure": "azure.ai.openai", "anthropic": "anthropic", "gemini": "gcp.gemini",
                  "mock": "respan.mock"}
# Request params recorded as gen_ai.request.* when the body has them.
REQUEST_PARAMS = {"temperature": "temperature", "top_p": "top_p", "max_tokens": "max_tokens",
                  "max_completion_tokens": "max_tokens", "max_output_tokens": "max_tokens",
                  "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty",
                  "seed": "seed", "top_k": "top_k"}

_propagator = TraceContextTextMapPropagator()


def traces_url(endpoint: str) -> str:
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


def _ns(wall: float) -> int:
    return int(wall * 1e9)


class Tracing:
    """The gateway's TracerProvider (not the process-global one: a test's gateways do not meet) and
    the three parts of the plugin."""

    def __init__(self, settings: TracingSettings, gateway: Gateway) -> None:
        if not 0.0 <= settings.sample_ratio <= 1.0:
            raise ValueError("`tracing.sample_ratio` must be between 0 and 1")
        self.settings = settings
        self.gateway = gateway
        add_secrets(settings.headers.values())
        exporter = OTLPSpanExporter(endpoint=traces_url(settings.otlp_endpoint), headers=dict(settings.headers),
                                    timeout=settings.export_timeout)
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name,
                                      "service.version": getattr(respan_gateway, "__version__", "")}),
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        )
        self.provider.add_span_processor(BatchSpanProcessor(
            exporter, max_queue_size=settings.max_queue_size, schedule_delay_millis=settings.schedule_delay * 1000,
            max_export_batch_size=settings.max_export_batch_size, export_timeout_millis=settings.export_timeout * 1000,
        ))
        self.tracer = self.provider.get_tracer("respan_gateway")

    def request_middleware(self) -> RequestSpanStart:
        return RequestSpanStart(self)

    def attempt_middleware(self) -> AttemptSpan:
        return AttemptSpan(self)

    def observer(self) -> RequestSpanObserver:
        return RequestSpanObserver(self)

    def provider_name(self, provider_id: str | None) -> str | None:
        adapter = self.gateway.providers.get(provider_id or "")
        if adapter is None:
            return provider_id
        kind = adapter.settings.type or provider_id or ""
        return PROVIDER_NAMES.get(kind, kind)


class RequestSpanStart:
    """The ``tracing`` middleware: opens the request's span, a child of the client's traceparent."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing

    async def __call__(self, call: Call, call_next: CallNext) -> Result:
        parent = _propagator.extract(call.headers)
        operation = OPERATIONS.get(call.kind, call.kind)
        attributes: dict[str, Any] = {"gen_ai.operation.name": operation, "respan.request_id": call.request_id}
        if call.model:
            attributes["gen_ai.request.model"] = call.model
        span = self.tracing.tracer.start_span(
            f"{operation} {call.model}" if call.model else operation, context=parent, kind=SpanKind.SERVER,
            start_time=_ns(call.timings.started_at), attributes=attributes,
        )
        call.state[STATE_KEY] = span
        # Without the attempt stage in the pipeline, the upstream is at least a child of the request.
        _propagator.inject(call.upstream_headers, context=trace.set_span_in_context(span))
        return await call_next(call)


class AttemptSpan:
    """The ``tracing_attempt`` middleware: one CLIENT span per upstream attempt, whose traceparent
    goes upstream; it ends with the attempt (a stream's at its last chunk)."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing

    async def __call__(self, call: Call, call_next: CallNext) -> Result:
        parent = call.state.get(STATE_KEY)
        if parent is None:
            return await call_next(call)
        target = call.target
        model = target.upstream_model if target is not None else call.model
        operation = OPERATIONS.get(call.kind, call.kind)
        span = self.tracing.tracer.start_span(
            f"{operation} {model}" if model else operation, context=trace.set_span_in_context(parent),
            kind=SpanKind.CLIENT, attributes={"gen_ai.operation.name": operation},
        )
        _propagator.inject(call.upstream_headers, context=trace.set_span_in_context(span))
        index = len(call.attempts)
        try:
            result = await call_next(call)
        except BaseException as exc:
            self._end(span, call, index, exc)
            raise
        if isinstance(result, StreamResult):
            result.chunks = self._ending(result.chunks, span, call, index)
        else:
            self._end(span, call, index, None)
        return result

    async def _ending(self, chunks: AsyncIterator[Chunk], span: Any, call: Call, index: int) -> AsyncIterator[Chunk]:
        error: BaseException | None = None
        try:
            async for chunk in chunks:
                yield chunk
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._end(span, call, index, error)
            await aclose(chunks, quiet=True)

    def _end(self, span: Any, call: Call, index: int, error: BaseException | None) -> None:
        attempt = call.attempts[index] if len(call.attempts) > index else None
        target = call.target
        if attempt is not None:
            span.set_attribute("gen_ai.request.model", target.upstream_model if target is not None else attempt.model)
            span.set_attribute("respan.model", attempt.model)
            span.set_attribute("respan.provider.id", attempt.provider)
            name = self.tracing.provider_name(attempt.provider)
            if name:
                span.set_attribute("gen_ai.provider.name", name)
                span.set_attribute("gen_ai.system", name)  # the older name, for backends that read it
            if attempt.deployment:
                span.set_attribute("respan.deployment", attempt.deployment)
            adapter = self.tracing.gateway.providers.get(attempt.provider)
            if adapter is not None and adapter.base_url:
                parts = urlsplit(adapter.base_url)
                if parts.hostname:
                    span.set_attribute("server.address", parts.hostname)
                if parts.port:
                    span.set_attribute("server.port", parts.port)
        status = attempt.status if attempt is not None else None
        if isinstance(error, GatewayError):
            status = status or error.status
        if status:
            span.set_attribute("http.response.status_code", status)
        if error is None and index == len(call.attempts) - 1 and call.outcome.usage is not None:
            _usage(span, call.outcome.usage)
        message = attempt.error if attempt is not None and attempt.error else (str(error) if error is not None else None)
        if (status and status >= 400) or error is not None:
            span.set_attribute("error.type", str(status) if status and status >= 400 else type(error).__name__)
            span.set_status(Status(StatusCode.ERROR, message))
        span.end()


class RequestSpanObserver:
    """The ``tracing`` observer: ends the request's span with the outcome's attributes."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing

    async def shutdown(self) -> None:
        # Sends what is queued (up to export_timeout), in a thread: the exporter's HTTP client blocks.
        await asyncio.to_thread(self.tracing.provider.shutdown)

    def observe(self, call: Call) -> None:
        span = call.state.pop(STATE_KEY, None)
        if span is None:
            return
        o = call.outcome
        if call.model:
            span.set_attribute("gen_ai.request.model", call.model)
            span.update_name(f"{OPERATIONS.get(call.kind, call.kind)} {call.model}")
        for field, name in REQUEST_PARAMS.items():
            raw = call.body.get(field)
            if raw is not None:
                try:
                    value = msgspec.json.decode(raw)
                except msgspec.DecodeError:
                    continue
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    span.set_attribute(f"gen_ai.request.{name}", value)
        if call.stream:
            span.set_attribute("respan.stream", True)
        answer = o.answer if isinstance(o.answer, dict) else None
        response_model = (answer or {}).get("model") or o.model
        if response_model:
            span.set_attribute("gen_ai.response.model", str(response_model))
        if answer is not None and isinstance(answer.get("id"), str):
            span.set_attribute("gen_ai.response.id", answer["id"])
        reasons = _finish_reasons(answer)
        if reasons:
            span.set_attribute("gen_ai.response.finish_reasons", reasons)
        name = self.tracing.provider_name(o.provider)
        if name:
            span.set_attribute("gen_ai.provider.name", name)
            span.set_attribute("gen_ai.system", name)
            span.set_attribute("respan.provider.id", o.provider or "")
        if o.usage is not None:
            _usage(span, o.usage)
        span.set_attribute("respan.tenant", call.principal.tenant)
        span.set_attribute("respan.upstream_attempts", len(call.attempts))
        span.set_attribute("respan.cache_hit", o.cache_hit)
        if o.cost:
            span.set_attribute("respan.cost_usd", o.cost)
        if o.log_id:
            span.set_attribute("respan.log_id", o.log_id)
        if o.status:
            span.set_attribute("http.response.status_code", o.status)
        if o.status >= 400:
            span.set_attribute("error.type", str(o.status))
        if o.status >= 500 or o.stream_end == "error":  # a server span's 4xx is the client's error
            span.set_status(Status(StatusCode.ERROR, o.error.message if o.error is not None else None))
        span.end(end_time=_ns(call.timings.started_at + o.latency) if o.latency else time.time_ns())


def _usage(span: Any, usage: Any) -> None:
    span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
    if usage.cache_read_tokens:
        span.set_attribute("gen_ai.usage.cache_read.input_tokens", usage.cache_read_tokens)
    if usage.cache_write_tokens:
        span.set_attribute("gen_ai.usage.cache_creation.input_tokens", usage.cache_write_tokens)


def _finish_reasons(answer: dict[str, Any] | None) -> list[str]:
    if answer is None:
        return []
    choices = answer.get("choices")
    if isinstance(choices, list):
        return [str(c["finish_reason"]) for c in choices if isinstance(c, dict) and c.get("finish_reason")]
    if isinstance(answer.get("stop_reason"), str):  # Anthropic Messages
        return [answer["stop_reason"]]
    if isinstance(answer.get("status"), str) and answer.get("object") == "response":  # Responses API
        return [answer["status"]]
    return []
