"""Reliability: retries, fallbacks and timeouts, so that an upstream failure is never a silent one.

Middleware ``reliability`` (order 800) walks the candidates routing put on ``call.candidates``
(without routing: the one target the core resolves), setting ``call.target`` for each attempt:

- **Retries** of the same candidate on retryable errors (connection, 408, 409, 429, 5xx, 529; a
  timeout only when no fallback is left, or ``retry_on_timeout``) when the request, its model's config
  or the section has ``retry_params``; without them only a 429 is retried, and only when there is no
  fallback to go to. Waits double from ``retry_after`` with jitter, are never shorter than the
  provider's ``Retry-After``, and all waits of a request share one ``retry_budget``.
- **Fallbacks**: once a candidate failed for good with a fallback trigger (connection, timeout,
  401/403/404/408/409/429, 5xx, a prompt too long for the model; anything with ``fallback_on =
  "any"``), the next candidate.
- **Timeouts** per attempt: first byte (a complete answer), first token (a stream's head) and, for
  streams, the idle gap between chunks; a total deadline over the whole request. The connect timeout
  is the core's (``[upstream]`` / ``[providers.<id>]``).
- **Streams** fail over before their first token: the head is fetched here, before the client's
  response starts. After it, a break (cut, stall, malformed chunk, missing end) is continued on the
  next candidate that accepts an assistant prefill, when the endpoint can continue its streams;
  otherwise it ends the client's stream with an explicit error event.

Every attempt is on ``call.attempts`` (the core records it; this stage adds what only it sees: timeouts
and stream failures). See README.md and docs/reliability.md.

Modules: :mod:`.settings` (the ``[reliability]`` section and its bounds), :mod:`.policy` (what is
retried or falls back, the backoff, ``Retry-After``, the retry budget), :mod:`.timing` (first-byte,
idle and total limits, chunk checks) and :mod:`.middleware` (the retry loop).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from respan_gateway import hookimpl

from .middleware import ReliabilityMiddleware
from .settings import ModelReliability, ProviderTimeouts, ReliabilitySettings, RetryDefaults

if TYPE_CHECKING:
    from respan_gateway.hookspecs import RegisterMiddleware

__all__ = ["ReliabilitySettings", "ProviderTimeouts", "ModelReliability", "RetryDefaults", "ReliabilityMiddleware"]


@hookimpl
def register_middlewares(register: RegisterMiddleware) -> None:
    register("reliability", ReliabilityMiddleware, order=800, settings=ReliabilitySettings)
