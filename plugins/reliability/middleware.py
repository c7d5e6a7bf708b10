"""The retry loop: every candidate in order, each retried by the policy, each attempt timed.

For each attempt ``call.target`` is a fresh copy of the candidate (later stages fill in its key and
endpoint); the loop stops at the first answer, at a failure the policy neither retries nor hands to
the next candidate, or at the total deadline.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import msgspec

from respan_gateway import BadRequest, Call, CallNext, ConfigError, GatewayError, Result, Target, UpstreamError, UpstreamTimeout

from .policy import Policy, final_error
from .settings import ReliabilitySettings
from .timing import timed_attempt

if TYPE_CHECKING:
    from respan_gateway import Gateway

__all__ = ["ReliabilityMiddleware"]


class ReliabilityMiddleware:
    def __init__(self, settings: ReliabilitySettings, gateway: Gateway) -> None:
        self.settings = settings
        self.policy = Policy(settings)
        self.catalog = gateway.catalog
        # The section's other bounds are its struct's (see .settings).
        source = gateway.config.source
        for pid, timeouts in settings.providers.items():
            if pid not in gateway.providers:
                raise ConfigError(f"{source}: `reliability.providers.{pid}`: no provider `{pid}` is configured")
            for key in ("first_byte_timeout", "idle_timeout"):
                value = getattr(timeouts, key)
                if value is not None and value <= 0:
                    raise ConfigError(f"{source}: `reliability.providers.{pid}.{key}`: must be greater than 0")

    async def __call__(self, call: Call, call_next: CallNext) -> Result:
        s = self.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.total_timeout
        plan = self.policy.plan(call)
        if call.params.timeout is not None and call.params.timeout <= 0:
            raise BadRequest("`timeout` must be greater than 0 seconds", param="timeout")
        candidates: list[Target | None] = list(call.candidates) or [self._resolve(call)]
        last: GatewayError | None = None
        for index, candidate in enumerate(candidates):
            has_next = index + 1 < len(candidates)
            done = 0
            while True:
                if loop.time() >= deadline:
                    raise final_error(last) if last is not None else UpstreamTimeout(
                        f"no answer within {s.total_timeout:g}s (total_timeout)")
                call.target = _copy(candidate)
                try:
                    return await timed_attempt(s, call, call_next, deadline)
                except UpstreamError as exc:
                    last = exc
                    wait = plan.wait(exc, done, has_next)
                    if wait is not None and loop.time() + wait < deadline:
                        plan.spend(wait)
                        done += 1
                        await asyncio.sleep(wait)
                        continue
                    if has_next and self.policy.falls_back(exc):
                        break
                    raise final_error(exc) from None
                except GatewayError as exc:
                    last = exc
                    if has_next and self.policy.falls_back(exc):
                        break
                    raise
        assert last is not None
        raise final_error(last)

    def _resolve(self, call: Call) -> Target | None:
        """Without routing: the core's target for `model` (None leaves it to the core, which says why)."""
        if call.target is not None:
            return call.target
        if not call.model:
            return None
        return self.catalog.resolve(call.model, call.params.route_provider_override)


def _copy(target: Target | None) -> Target | None:
    # Later stages (deployments, credentials) fill in the copy; the candidate stays as routing made it.
    return None if target is None else msgspec.structs.replace(target, extra=dict(target.extra))
