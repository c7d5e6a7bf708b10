"""``[cache]``: where answers are stored, how long, how large, and how identical misses wait."""

from __future__ import annotations

from typing import Literal

import msgspec

from respan_gateway import Settings

DAY = 86_400.0
#: Body fields left out of the key by default: they do not change the answer.
IGNORED_FIELDS = ("user", "metadata", "stream", "stream_options", "safety_identifier", "prompt_cache_key", "store")


class CacheSettings(Settings):
    # "auto": Redis when `[state] redis_url` is set (shared by every replica), else in the process;
    # "memory": in the process, even with Redis; "redis": Redis, and the start fails without a URL.
    backend: Literal["auto", "memory", "redis"] = "auto"
    # Seconds an answer is kept when the request gives no `cache_ttl`, and the most a request may ask.
    default_ttl: float = 30 * DAY
    max_ttl: float = 30 * DAY
    # The in-process backend's bounds: least recently used entries go first when either is reached.
    max_entries: int = 10_000
    max_bytes: int = 256 * 1024 * 1024
    # An answer larger than this (its stored form) is not stored, on either backend.
    max_entry_bytes: int = 1024 * 1024
    # Body fields that do not change the answer, left out of the key (Respan params always are).
    ignore_fields: list[str] = msgspec.field(default_factory=lambda: list(IGNORED_FIELDS))
    # Single-flight: identical misses wait for the first one's answer at most `wait_timeout` seconds,
    # then go upstream themselves. Across replicas (Redis) the first holds a lock for at most
    # `lock_ttl` seconds, and the others look for its answer every `poll_interval` seconds.
    wait_timeout: float = 30.0
    lock_ttl: float = 30.0
    poll_interval: float = 0.05
    # Redis unreachable: at most one warning in the process log per this many seconds (the metric counts all).
    warn_interval: float = 60.0
