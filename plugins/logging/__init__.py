"""Logging: one durable record per request, and the logs API.

The record is written by an observer from what the core says happened to the call (``call.outcome``);
a small middleware names it before the answer is sent (``x-respan-log-id``). See README.md beside
this file for the record's fields, the config section ``[logging]`` and the API.
"""

from __future__ import annotations

from respan_gateway import hookimpl
from respan_gateway.hookspecs import RegisterMiddleware, RegisterObserver, RegisterRoute, RegisterStore

from .api import ROUTES
from .log_id import LOG_ID_HEADER, LogIdMiddleware
from .observer import LoggingObserver
from .record import LogRecord
from .settings import LoggingSettings
from .store import MIGRATIONS


@hookimpl
def register_middlewares(register: RegisterMiddleware) -> None:
    # After auth (a record needs a tenant), before params (a 400 from params validation is logged).
    register("logging", LogIdMiddleware, order=150, settings=LoggingSettings)


@hookimpl
def register_observers(register: RegisterObserver) -> None:
    # The record keeps the completion: the core assembles streamed answers for it.
    register("logging", LoggingObserver, settings=LoggingSettings, needs_answer=True)


@hookimpl
def register_routes(register: RegisterRoute) -> None:
    for path, endpoint, methods in ROUTES:
        register(path, endpoint, methods=methods)


@hookimpl
def register_stores(register: RegisterStore) -> None:
    register("request_logs", MIGRATIONS)


__all__ = ["LOG_ID_HEADER", "LogIdMiddleware", "LogRecord", "LoggingObserver", "LoggingSettings"]
