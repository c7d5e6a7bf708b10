"""Tracing: OpenTelemetry spans of each request and each upstream attempt, exported by OTLP/HTTP.

Off unless ``[tracing] otlp_endpoint`` is set; then nothing of it is in the pipeline (its factories
return None) and OpenTelemetry is not even imported. On: the ``tracing`` middleware (first after
``metrics``) opens the request's span, a child of the client's W3C ``traceparent`` when it sends one;
``tracing_attempt`` (last before the provider adapter, so it runs once per attempt, retries and
fallbacks included) opens one child span per upstream attempt and passes its ``traceparent`` upstream
through ``call.upstream_headers``; the ``tracing`` observer ends the request's span when the answer has
been sent or the stream has ended, with the outcome's attributes. Attributes follow the OpenTelemetry
GenAI semantic conventions (``gen_ai.*``). See README.md beside this file.
"""

from __future__ import annotations

from respan_gateway import hookimpl
from respan_gateway.hookspecs import RegisterMiddleware, RegisterObserver

from .settings import TracingSettings
from .spans import AttemptSpans, RequestSpans, RequestSpanEnd


@hookimpl
def register_middlewares(register: RegisterMiddleware) -> None:
    # Right after metrics (50), before auth (100): a refused request has its span too.
    register("tracing", RequestSpans.factory, order=60, settings=TracingSettings)
    # After credentials (900): the last stage before the adapter, once per upstream attempt.
    register("tracing_attempt", AttemptSpans.factory, order=950, requires=("tracing",))


@hookimpl
def register_observers(register: RegisterObserver) -> None:
    register("tracing", RequestSpanEnd.factory, settings=TracingSettings)


__all__ = ["AttemptSpans", "RequestSpanEnd", "RequestSpans", "TracingSettings"]
