"""The ``[limits]`` section (see README.md beside this file)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from respan_gateway import Settings

Fraction = Annotated[float, msgspec.Meta(gt=0, le=1)]


class LimitsSettings(Settings):
    # Redis unreachable ([state] redis_url set): "closed" refuses every request that has a limit
    # (503 `limits_unavailable`), "open" lets it through unchecked (logged, counted in a metric).
    on_redis_unavailable: Literal["closed", "open"] = "closed"
    # Completion tokens the estimate counts when a request names no `max_tokens` (or
    # `max_completion_tokens`, `max_output_tokens`); capped by the model's `max_output_tokens`.
    default_max_tokens: int = 1024
    # A warning when a counter crosses this fraction of its limit (0.8 = 80 %); per limit name
    # (`customer_budget`, `key_requests_per_minute`...) in `warning_thresholds`. 1 = no warnings.
    warning_threshold: Fraction = 0.8
    warning_thresholds: dict[str, Fraction] = {}
    # POST a JSON event to this URL on each warning (fire and forget); empty = no webhook.
    warning_webhook_url: str = ""
    warning_webhook_timeout: float = 5.0
    # Webhook calls in flight at most; more warnings meanwhile are dropped (counted in a metric).
    warning_webhook_max_pending: int = 100
    # Seconds a customer's stored record (its budgets) is kept in the process before it is read again
    # (a users API PATCH made on another replica applies within this); the same process sees its own at once.
    customer_cache_ttl: float = 10.0
    # Customers held in the process at most (the least recently used go first).
    customer_cache_size: int = 100_000
    # Usage totals and customer upserts are written in batches, at most this many seconds apart.
    flush_interval: float = 1.0
