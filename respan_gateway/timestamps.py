"""ISO 8601 timestamps as epoch seconds: the one parser of the config (key expiry), the logs API and the dashboard."""

from __future__ import annotations

import datetime as dt


def parse_iso(text: str) -> float:
    """Epoch seconds of an ISO 8601 date or date-time; UTC when it names no zone, ``Z`` accepted.
    Raises ``ValueError`` for anything else (the caller names the field)."""
    parsed = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.timestamp()


__all__ = ["parse_iso"]
