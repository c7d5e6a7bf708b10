"""What is retried, what falls back, and how long to wait: the decisions, apart from the loop.

A :class:`RetryPlan` is one request's allowance (retries per candidate, first wait, the retry budget
left); :class:`Policy` makes it from the settings and the request's ``retry_params`` and says which
failures move on to the next candidate. Nothing here waits or calls upstream.
"""

from __future__ import annotations

import math
import random

from respan_gateway import BadRequest, Call, GatewayError, UpstreamError

from .settings import ReliabilitySettings

__all__ = ["Policy", "RetryPlan", "final_error"]

# Statuses that fall back by default besides 5xx: rate limits, conflicts, and the provider's key or model.
_FALLBACK_STATUSES = frozenset({401, 403, 404, 408, 409, 429})


class RetryPlan:
    """One request's retries: how many per candidate, the first wait, and the budget of waiting left."""

    __slots__ = ("retries", "base", "only_rate_limits", "budget", "_settings")

    def __init__(self, settings: ReliabilitySettings, retries: int, base: float, only_rate_limits: bool) -> None:
        self._settings = settings
        self.retries = retries
        self.base = base
        # Without `retry_params`: only a 429, and only when no fallback is left.
        self.only_rate_limits = only_rate_limits
        self.budget = settings.retry_budget

    def wait(self, exc: UpstreamError, done: int, has_next: bool) -> float | None:
        """Seconds to wait before trying the same candidate again after ``exc``; None: no retry.

        ``done``: the retries of this candidate so far. The wait doubles from the plan's first wait
        (capped at ``max_backoff``), gets its jitter, is never shorter than the provider's
        ``Retry-After``, and must fit in the budget left.
        """
        if not exc.retryable or done >= self.retries:
            return None
        if self.only_rate_limits and (exc.status != 429 or has_next):
            return None
        s = self._settings
        wait = min(self.base * 2 ** done, s.max_backoff) * (1 + s.jitter * random.random())
        wait = max(wait, exc.retry_after or 0.0)
        return wait if wait <= self.budget else None

    def spend(self, wait: float) -> None:
        self.budget -= wait


class Policy:
    def __init__(self, settings: ReliabilitySettings) -> None:
        self.settings = settings

    def plan(self, call: Call) -> RetryPlan:
        """The retries ``call`` is allowed: its ``retry_params`` within the config's limits."""
        s = self.settings
        rp = call.params.retry_params
        if rp is None:
            return RetryPlan(s, s.rate_limit_retries, s.rate_limit_backoff, True)
        if rp.num_retries is not None and rp.num_retries < 0:
            raise BadRequest("`retry_params.num_retries` must not be negative", param="retry_params.num_retries")
        if rp.retry_after is not None and rp.retry_after < 0:
            raise BadRequest("`retry_params.retry_after` must not be negative", param="retry_params.retry_after")
        if not rp.retry_enabled:
            return RetryPlan(s, 0, 0.0, False)
        retries = s.num_retries if rp.num_retries is None else rp.num_retries
        base = s.retry_after if rp.retry_after is None else rp.retry_after
        return RetryPlan(s, min(retries, s.max_retries), base, False)

    def falls_back(self, exc: GatewayError) -> bool:
        """Whether a candidate that failed for good with ``exc`` hands over to the next one.

        The gateway's own refusals (a bad request for this provider...) move on only with
        ``fallback_on = "any"``.
        """
        if self.settings.fallback_on == "any":
            return True
        return isinstance(exc, UpstreamError) and (exc.status >= 500 or exc.status in _FALLBACK_STATUSES)


def final_error(exc: GatewayError) -> GatewayError:
    """The error the client gets: the last one, with the provider's Retry-After passed on."""
    retry_after = getattr(exc, "retry_after", None)
    if exc.status == 429 and retry_after is not None:
        exc.headers.setdefault("retry-after", str(max(1, math.ceil(retry_after))))
    return exc
