"""What is retried, what falls back, and how long to wait: the decisions, apart from the loop.

A :class:`RetryPlan` is one request's allowance: the retry budget all its candidates share, and per
candidate its :class:`Retries` (the request's ``retry_params`` over the model's defaults over the
section's, field by field). :class:`Policy` makes it and says which failures move on to the next
candidate. Nothing here waits or calls upstream.
"""

from __future__ import annotations

import math
import random
from typing import Any

from respan_gateway import CONTEXT_LENGTH_EXCEEDED, BadRequest, Call, GatewayError, Target, UpstreamError, UpstreamTimeout

from .settings import ReliabilitySettings

__all__ = ["Policy", "RetryPlan", "Retries", "final_error", "is_timeout"]

# Statuses that fall back by default besides 5xx: rate limits, conflicts, and the provider's key or model.
_FALLBACK_STATUSES = frozenset({401, 403, 404, 408, 409, 429})


def is_timeout(exc: GatewayError) -> bool:
    """A provider that did not answer in time (connect, first byte, first token), not a provider's own 504 body."""
    return isinstance(exc, UpstreamTimeout)


class Retries:
    """The retries of one candidate: how many, the first wait, and on which failures."""

    __slots__ = ("count", "base", "only_rate_limits", "on_timeout")

    def __init__(self, count: int, base: float, only_rate_limits: bool, on_timeout: bool) -> None:
        self.count = count
        self.base = base
        # No retry_params anywhere: only a 429, and only when no fallback is left.
        self.only_rate_limits = only_rate_limits
        # Resend after a timeout even when a fallback is left (else the fallback is used at once).
        self.on_timeout = on_timeout


class RetryPlan:
    """One request's retries: per candidate its :class:`Retries`, and the budget of waiting left."""

    __slots__ = ("budget", "_settings", "_request")

    def __init__(self, settings: ReliabilitySettings, call: Call) -> None:
        self._settings = settings
        self._request = call.params.retry_params
        self.budget = settings.retry_budget

    def retries(self, target: Target | None) -> Retries:
        """The request's ``retry_params`` over the model's (``models.<slug>.retry_params``) over the section's."""
        s = self._settings
        model = s.models.get(target.model) if target is not None else None
        layers: list[Any] = [r for r in (self._request, model.retry_params if model else None, s.retry_params) if r is not None]
        on_timeout = _first([self._request, model, model.retry_params if model else None, s.retry_params], "retry_on_timeout")
        on_timeout = s.retry_on_timeout if on_timeout is None else on_timeout
        if not layers:
            return Retries(s.rate_limit_retries, s.rate_limit_backoff, True, on_timeout)
        if not layers[0].retry_enabled:
            return Retries(0, 0.0, False, False)
        count = _first(layers, "num_retries")
        base = _first(layers, "retry_after")
        count = s.num_retries if count is None else count
        return Retries(min(count, s.max_retries), s.retry_after if base is None else base, False, on_timeout)

    def wait(self, rules: Retries, exc: UpstreamError, done: int, has_next: bool) -> float | None:
        """Seconds to wait before trying the same candidate again after ``exc``; None: no retry.

        ``done``: the retries of this candidate so far. A timeout with a fallback left is not resent
        (unless ``retry_on_timeout``); the wait doubles from the first wait (capped at
        ``max_backoff``), gets its jitter, is never shorter than the provider's ``Retry-After``, and
        must fit in the budget left.
        """
        if not exc.retryable or done >= rules.count:
            return None
        if rules.only_rate_limits and (exc.status != 429 or has_next):
            return None
        if has_next and is_timeout(exc) and not rules.on_timeout:
            return None
        s = self._settings
        wait = min(rules.base * 2 ** done, s.max_backoff) * (1 + s.jitter * random.random())
        wait = max(wait, exc.retry_after or 0.0)
        return wait if wait <= self.budget else None

    def spend(self, wait: float) -> None:
        self.budget -= wait


def _first(layers: list[Any], name: str) -> Any:
    for layer in layers:
        value = getattr(layer, name, None) if layer is not None else None
        if value is not None:
            return value
    return None


class Policy:
    def __init__(self, settings: ReliabilitySettings) -> None:
        self.settings = settings

    def plan(self, call: Call) -> RetryPlan:
        """The retries ``call`` is allowed; a negative ``retry_params`` field is a 400."""
        rp = call.params.retry_params
        if rp is not None:
            if rp.num_retries is not None and rp.num_retries < 0:
                raise BadRequest("`retry_params.num_retries` must not be negative", param="retry_params.num_retries")
            if rp.retry_after is not None and rp.retry_after < 0:
                raise BadRequest("`retry_params.retry_after` must not be negative", param="retry_params.retry_after")
        return RetryPlan(self.settings, call)

    def falls_back(self, exc: GatewayError) -> bool:
        """Whether a candidate that failed for good with ``exc`` hands over to the next one.

        A prompt longer than the model's context always does (another model may take it); the
        gateway's own refusals (a bad request for this provider...) move on only with
        ``fallback_on = "any"``.
        """
        if self.settings.fallback_on == "any":
            return True
        if not isinstance(exc, UpstreamError):
            return False
        return exc.status >= 500 or exc.status in _FALLBACK_STATUSES or exc.code == CONTEXT_LENGTH_EXCEEDED


def final_error(exc: GatewayError) -> GatewayError:
    """The error the client gets: the last one, with the provider's Retry-After passed on."""
    retry_after = getattr(exc, "retry_after", None)
    if exc.status == 429 and retry_after is not None:
        exc.headers.setdefault("retry-after", str(max(1, math.ceil(retry_after))))
    return exc
