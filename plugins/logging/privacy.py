"""What a record may keep: ``disable_log`` keeps metrics and ids, and no content at all."""

from __future__ import annotations

from respan_gateway import Call, RespanParams

from .record import CONTENT_FIELDS, LogRecord

_NO_PARAMS = RespanParams()


def asks_disable_log(call: Call) -> bool:
    """disable_log, also for a request rejected before its params were read (params still at their
    defaults): then any mention of disable_log in the body, or a params header, keeps the content out
    of the record. Better no content than a leak."""
    if call.params.disable_log:
        return True
    if call.params_collected or call.params != _NO_PARAMS:  # the params were read: they say no
        return False
    return b"disable_log" in call.raw_body or any(
        call.headers.get(h) for h in ("x-data-respan-params", "x-data-keywordsai-params"))


def strip_content(record: LogRecord) -> None:
    """Metrics and ids only: no content anywhere in the row."""
    for name in CONTENT_FIELDS:
        setattr(record, name, None)


__all__ = ["asks_disable_log", "strip_content"]
