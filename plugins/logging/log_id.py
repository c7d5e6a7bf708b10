"""The one part of logging that runs before the answer is sent: the record's id on the response.

The middleware runs right after ``auth`` and before ``params``: a request rejected by params
validation (400) gets an id and is logged, and every record has a tenant. Unauthenticated requests
(401) never reach it, so they get no id and no record: they belong to no tenant.
"""

from __future__ import annotations

from respan_gateway import Call, CallNext, Gateway, Result
from respan_gateway.ids import uuid7

from .settings import LoggingSettings

LOG_ID_HEADER = "x-respan-log-id"


class LogIdMiddleware:
    """Names the call's record (``call.outcome.log_id``, the ``x-respan-log-id`` header); no id, and
    no header, when a stage decided the call is not logged (``call.outcome.omit_log``)."""

    def __init__(self, settings: LoggingSettings, gateway: Gateway) -> None:
        pass

    async def __call__(self, call: Call, call_next: CallNext) -> Result:
        log_id = uuid7()
        call.outcome.log_id = log_id
        call.response_headers[LOG_ID_HEADER] = log_id
        result = await call_next(call)
        if call.outcome.omit_log:
            call.response_headers.pop(LOG_ID_HEADER, None)
            call.outcome.log_id = None
        return result


__all__ = ["LOG_ID_HEADER", "LogIdMiddleware"]
