"""``CallRecorder``: a plugin for one test that keeps every :class:`~respan_gateway.Call` it sees.

Register it like any plugin (``GatewayServer(config, plugins=(recorder,))`` or
``gateway_factory(plugins=(recorder,))``); after a request, read what the stages decided on the call
object: ``recorder.last.params``, ``.attempts``, ``.target``, ``.beta_flags``. Its middleware runs
early (order 150) and keeps a reference, so the call it holds shows every later stage's work.
"""

from __future__ import annotations

from typing import Any

from ..call import Call, CallNext, Result
from ..hookspecs import hookimpl


class CallRecorder:
    __name__ = "call_recorder"

    def __init__(self) -> None:
        self.calls: list[Call] = []

    @hookimpl
    def register_middlewares(self, register: Any) -> None:
        def factory(settings: Any, gateway: Any) -> Any:
            async def record(call: Call, call_next: CallNext) -> Result:
                self.calls.append(call)
                return await call_next(call)

            return record

        register("call_recorder", factory, order=150)

    @property
    def last(self) -> Call:
        return self.calls[-1]

    def attempts(self) -> list[tuple[str, int | None]]:
        """(model, status) of each upstream attempt of the last call."""
        return [(a.model, a.status) for a in self.last.attempts]
