"""The ``[logging]`` section (see README.md beside this file)."""

from __future__ import annotations

from typing import Literal

from respan_gateway import Settings


class LoggingSettings(Settings):
    # Records per INSERT, and the longest a record waits in memory before it is written (seconds).
    batch_size: int = 200
    flush_interval: float = 0.5
    # Records held in memory at most, by count and by bytes (record.stored_size: their JSON fields as
    # stored, a batch being written included); beyond either, new records go straight to the spill file.
    queue_size: int = 10000
    queue_bytes: int = 32 * 1024 * 1024
    # Where records go while the store is down or slow (one append-only file per process).
    spill_dir: str = "data/spill"
    # A batch insert slower than this counts as a failure: the batch is spilled, the store marked down.
    write_timeout: float = 5.0
    # While the store is down: seconds between attempts to replay the spill files.
    retry_interval: float = 2.0
    # Graceful shutdown: how long the last writes may take before the rest is spilled.
    shutdown_timeout: float = 10.0
    # Token estimates (answers without usage, X-Respan-Beta token-breakdown): the vocabulary counted
    # with (respan_gateway/tokens.py: within ~2% of the BPE, ~4 MB once loaded on first need), or
    # "heuristic" (UTF-8 bytes/4, nothing loaded).
    tokenizer: Literal["o200k_base", "cl100k_base", "heuristic"] = "o200k_base"
    # The tenant whose logs hold the requests refused before their caller was known (a bad or missing
    # key: 401; a request shed by the admission limit with no good key: 503), without content.
    # "" = such requests get no record.
    unauthenticated_tenant: str = "default"
