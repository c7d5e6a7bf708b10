"""Logging: one durable record per request, the logs API, request_breakdown and token breakdowns.

See README.md beside this file for the record's fields, the config section ``[logging]`` and the API.
"""

from __future__ import annotations

from typing import Any, Literal

from respan_gateway import Settings, hookimpl

from .api import ROUTES
from .middleware import LoggingMiddleware
from .record import LogRecord
from .store import MIGRATIONS


class LoggingSettings(Settings):
    # Records per INSERT, and the longest a record waits in memory before it is written (seconds).
    batch_size: int = 200
    flush_interval: float = 0.5
    # Records held in memory at most; beyond, new records go straight to the spill file.
    queue_size: int = 10000
    # Where records go while the store is down or slow (one append-only file per process).
    spill_dir: str = "data/spill"
    # A batch insert slower than this counts as a failure: the batch is spilled, the store marked down.
    write_timeout: float = 5.0
    # While the store is down: seconds between attempts to replay the spill files.
    retry_interval: float = 2.0
    # Graceful shutdown: how long the last writes may take before the rest is spilled.
    shutdown_timeout: float = 10.0
    # Token estimates (streams without usage, X-Respan-Beta token-breakdown): the BPE encoding, loaded
    # on first need (o200k_base adds ~60-130 MB per worker, cl100k_base about half), or "heuristic"
    # (characters/4, nothing loaded).
    tokenizer: Literal["o200k_base", "cl100k_base", "heuristic"] = "o200k_base"


@hookimpl
def register_middlewares(register: Any) -> None:
    # After auth (a record needs a tenant), before params (a 400 from params validation is logged).
    register("logging", LoggingMiddleware, order=150, settings=LoggingSettings)


@hookimpl
def register_routes(register: Any) -> None:
    for path, endpoint, methods in ROUTES:
        register(path, endpoint, methods=methods)


@hookimpl
def register_stores(register: Any) -> None:
    register("request_logs", MIGRATIONS)


__all__ = ["LogRecord", "LoggingMiddleware", "LoggingSettings"]
