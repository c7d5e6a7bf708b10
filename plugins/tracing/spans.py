"""The plugin's three parts, made by factories that return None when tracing is off: then nothing of
it is in the pipeline or among the observers, and OpenTelemetry is never imported (``.otel`` holds
everything that uses it)."""

from __future__ import annotations

import weakref
from typing import Any

from respan_gateway import Gateway

from .settings import TracingSettings

# One Tracing (its TracerProvider and exporter) per gateway, shared by its three parts.
_tracing: weakref.WeakKeyDictionary[Gateway, Any] = weakref.WeakKeyDictionary()


def tracing_for(settings: TracingSettings, gateway: Gateway) -> Any:
    if not settings.otlp_endpoint:
        return None
    tracing = _tracing.get(gateway)
    if tracing is None:
        from .otel import Tracing

        tracing = _tracing[gateway] = Tracing(settings, gateway)
    return tracing


class RequestSpans:
    """The ``tracing`` middleware: the request's span (``.otel.RequestSpanStart``)."""

    @staticmethod
    def factory(settings: TracingSettings, gateway: Gateway) -> Any:
        tracing = tracing_for(settings, gateway)
        return None if tracing is None else tracing.request_middleware()


class AttemptSpans:
    """The ``tracing_attempt`` middleware: one span per upstream attempt (``.otel.AttemptSpan``)."""

    @staticmethod
    def factory(settings: Any, gateway: Gateway) -> Any:
        tracing = tracing_for(gateway.config.section("tracing", TracingSettings), gateway)
        return None if tracing is None else tracing.attempt_middleware()


class RequestSpanEnd:
    """The ``tracing`` observer: ends the request's span with the outcome; flushes at shutdown."""

    @staticmethod
    def factory(settings: TracingSettings, gateway: Gateway) -> Any:
        tracing = tracing_for(settings, gateway)
        return None if tracing is None else tracing.observer()
