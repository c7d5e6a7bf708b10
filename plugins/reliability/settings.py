"""The ``[reliability]`` section: limits and defaults of retries, fallbacks, timeouts and continuation.

Every bound is a msgspec constraint, so a bad value stops the start with the config's own error
(``reliability.jitter``: expected ``float`` >= 0.0). The checks of ``providers.<id>`` and
``models.<slug>`` are the middleware's, at start-up: they need the configured providers and the
catalog, and msgspec names an entry of a table ``providers[...]``, not by its id.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from respan_gateway import Settings

__all__ = ["ReliabilitySettings", "ProviderTimeouts", "ModelReliability", "RetryDefaults"]

Count = Annotated[int, msgspec.Meta(ge=0)]
Seconds = Annotated[float, msgspec.Meta(ge=0)]
Fraction = Annotated[float, msgspec.Meta(ge=0)]
# A timeout of 0 would fail every attempt before it is sent.
Timeout = Annotated[float, msgspec.Meta(gt=0)]


class RetryDefaults(Settings):
    """Default ``retry_params`` of a request that sends none (or leaves a field out)."""

    retry_enabled: bool = True
    num_retries: Count | None = None
    retry_after: Seconds | None = None
    # Resend the same model after a timeout even when a fallback is left.
    retry_on_timeout: bool | None = None


class ProviderTimeouts(Settings):
    # > 0 when set; checked by the middleware, whose message names the provider id.
    first_byte_timeout: float | None = None
    first_token_timeout: float | None = None
    idle_timeout: float | None = None


class ModelReliability(ProviderTimeouts):
    """``[reliability.models."<slug>"]``: the timeouts and retries of one model (the slug routing resolved)."""

    # None: the section's `retry_on_timeout`.
    retry_on_timeout: bool | None = None
    # The default retry_params of a request for this model (field by field over the section's).
    retry_params: RetryDefaults | None = None


class ReliabilitySettings(Settings):
    # `retry_params` without `num_retries` / `retry_after`.
    num_retries: Count = 3
    retry_after: Seconds = 0.2
    # A request's `num_retries` is capped at this.
    max_retries: Count = 10
    # Without `retry_params`: retries of an upstream 429 when there is no fallback, first wait (doubles).
    rate_limit_retries: Count = 2
    rate_limit_backoff: Seconds = 1.0
    # Longest computed backoff of one retry (a provider's Retry-After may still ask for more).
    max_backoff: Seconds = 10.0
    # Random extra wait, as a fraction of the backoff (0.25: up to 25% more).
    jitter: Fraction = 0.25
    # Seconds a request may spend waiting between retries, in all.
    retry_budget: Seconds = 30.0
    # "default": the SPEC's triggers; "any": every failed attempt moves on to the next candidate.
    fallback_on: Literal["default", "any"] = "default"
    # Seconds until a complete non-streamed answer (and, unless first_token_timeout is set, a stream's first token).
    first_byte_timeout: Timeout = 120.0
    # Seconds until a stream's first token (content, tool call, reasoning or finish); None: first_byte_timeout.
    first_token_timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None
    # Longest silence between two chunks of a stream.
    idle_timeout: Timeout = 60.0
    # The whole request: every attempt, every wait, and the stream to its end.
    total_timeout: Timeout = 600.0
    # After a timeout, resend the same model (within its retries) even when a fallback is left.
    retry_on_timeout: bool = False
    # A stream broken after its first chunk continues on the next candidate that accepts an assistant prefill.
    continue_streams: bool = True
    # The retry_params of a request that sends none (field by field: the request's fields win).
    retry_params: RetryDefaults | None = None
    # Per provider id: first_byte_timeout, first_token_timeout and idle_timeout.
    providers: dict[str, ProviderTimeouts] = {}
    # Per model slug: the timeouts, retry_on_timeout and default retry_params.
    models: dict[str, ModelReliability] = {}
