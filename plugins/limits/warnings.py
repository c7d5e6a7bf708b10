"""Warnings: a counter crossing a fraction of its limit (``warning_threshold``) while a call is allowed.

Each crossing is a structured process-log event ``limit_warning`` and the metric
``respan_gateway_limit_warnings_total{limit}``; with ``warning_webhook_url`` the event is also POSTed
there as JSON, fire and forget (at most ``warning_webhook_max_pending`` at once; more are dropped and
counted). A crossing is seen by exactly one reservation (the counters step is atomic), so each
replica does not warn on its own.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import structlog

from respan_gateway.log import add_secrets
from respan_gateway.upstream import Timeout

from .policy import Applied
from .settings import LimitsSettings

log = structlog.get_logger("respan_gateway.limits")
_encode = msgspec.json.Encoder().encode
_JSON = {"content-type": "application/json"}


class Warnings:
    def __init__(self, settings: LimitsSettings, gateway: Any) -> None:
        self.settings = settings
        self.gateway = gateway
        self.count = gateway.metrics.counter("respan_gateway_limit_warnings_total",
                                             "Counters that crossed their warning threshold, by limit.", ("limit",))
        self.dropped = gateway.metrics.counter("respan_gateway_limit_webhooks_dropped_total",
                                               "Warning webhooks not sent: too many in flight, or the call failed.")
        self._tasks: set[asyncio.Task[None]] = set()
        if settings.warning_webhook_url:  # a Slack-style URL is a credential: never in a log line
            add_secrets((settings.warning_webhook_url,))

    def threshold(self, name: str) -> float:
        return self.settings.warning_thresholds.get(name, self.settings.warning_threshold)

    def check(self, tenant: str, applied: list[Applied], current: list[float], amounts: list[float]) -> None:
        for a, value, amount in zip(applied, current, amounts):
            if a.limit is None:
                continue
            threshold = self.threshold(a.name)
            if threshold >= 1:
                continue
            mark = threshold * a.limit
            if value < mark <= value + amount:
                self.emit(tenant, a, value + amount, threshold)

    def emit(self, tenant: str, a: Applied, value: float, threshold: float) -> None:
        event = {"event": "limit_warning", "tenant": tenant, "limit": a.name, "scope": a.scope, "subject": a.subject,
                 "current_value": round(value, 10), "limit_value": a.limit, "threshold": threshold,
                 "window_end": a.window.end, "time": time.time()}
        self.count.inc((a.name,))
        log.warning("limit_warning", **{k: v for k, v in event.items() if k != "event"})
        if self.settings.warning_webhook_url:
            if len(self._tasks) >= self.settings.warning_webhook_max_pending:
                self.dropped.inc()
                return
            task = asyncio.get_running_loop().create_task(self._post(event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _post(self, event: dict[str, Any]) -> None:
        try:
            bound = self.settings.warning_webhook_timeout
            response = await self.gateway.http.send("POST", self.settings.warning_webhook_url, _JSON, _encode(event),
                                                    Timeout(bound, bound, bound, bound))
            if response.status_code >= 400:
                raise RuntimeError(f"status {response.status_code}")
        except Exception as exc:  # a webhook's failure never touches a call
            self.dropped.inc()
            log.warning("limit_warning_webhook_failed", error=f"{type(exc).__name__}: {exc}"[:300])

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.settings.warning_webhook_timeout)


__all__ = ["Warnings"]
