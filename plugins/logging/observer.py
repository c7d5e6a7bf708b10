"""The logging observer: one record per named call, queued for the store when the call has ended.

The core calls :meth:`LoggingObserver.observe` once per call, after the answer was sent or the stream
ended (complete, cut, errored, or left by the client), with ``call.outcome`` complete. A call that a
stage chose not to log (``outcome.omit_log``) gets no record. A call refused before the logging
middleware named it (a 401, a 503 of the admission limit) gets one without content, under its
caller's tenant when known, else ``[logging] unauthenticated_tenant``. The writer's own health is in
the gateway's metrics registry.
"""

from __future__ import annotations

import structlog

from respan_gateway import ANONYMOUS, Call, Gateway, tokens
from respan_gateway.hookspecs import RequestLogReader
from respan_gateway.ids import uuid7

from .build import build_record
from .privacy import strip_content
from .reader import LogReader
from .record import LogRecord
from .settings import LoggingSettings
from .store import RequestLogStore
from .writer import RecordWriter

log = structlog.get_logger("respan_gateway.logging")


class LoggingObserver:
    def __init__(self, settings: LoggingSettings, gateway: Gateway) -> None:
        self.settings = settings
        self.gateway = gateway
        self.store: RequestLogStore | None = None
        self.writer = writer = RecordWriter(self, settings)
        tokens.use(settings.tokenizer)
        m = gateway.metrics
        # Several workers: the depths are summed over the living ones, store_up is the lowest (0 when
        # any worker's store is down), the running counts are per worker (a `pid` label).
        m.gauge("respan_gateway_log_queue_depth", "Log records in memory, not yet written.", source=lambda: len(writer.queue))
        m.gauge("respan_gateway_log_queue_bytes", "Bytes of the log records in memory (as stored), against [logging] queue_bytes.",
                source=lambda: writer.queued_bytes)
        m.gauge("respan_gateway_log_spill_pending", "Log records in spill files, waiting for the store.", source=lambda: writer.spill.pending)
        m.gauge("respan_gateway_log_store_up", "1 when the log store accepts writes.", source=lambda: 1.0 if writer.store_up else 0.0,
                multiprocess_mode="livemin")
        m.gauge("respan_gateway_log_records_written_total", "Log records written to the store by this process.", source=lambda: writer.written,
                multiprocess_mode="liveall")
        m.gauge("respan_gateway_log_records_spilled_total", "Log records written to a spill file by this process.", source=lambda: writer.spilled,
                multiprocess_mode="liveall")
        m.gauge("respan_gateway_log_records_quarantined_total", "Log records the store refused, set aside in a quarantine file.", source=lambda: writer.quarantined,
                multiprocess_mode="liveall")
        # The one way other plugins (and the logs API) read the records: hookspecs.RequestLogReader.
        gateway.provide(RequestLogReader, LogReader(self))

    # -- life cycle ---------------------------------------------------------------------------
    async def startup(self) -> None:
        if self.gateway.database is None:
            raise RuntimeError("the logging plugin needs the gateway's database (register_stores did not run)")
        self.store = RequestLogStore(self.gateway.database)
        self.writer.start()

    async def shutdown(self) -> None:
        await self.writer.close()

    async def ready(self) -> bool:
        """``/readyz``: false while the store refuses writes (records go to the spill file meanwhile)."""
        return self.writer.store_up

    async def insert(self, records: list[LogRecord]) -> None:
        """The writer's sink."""
        if self.store is None:
            raise RuntimeError("the request log store is not started")
        await self.store.insert(records)

    # -- per call -----------------------------------------------------------------------------
    def observe(self, call: Call) -> None:
        outcome = call.outcome
        if outcome.omit_log:
            return
        refused = outcome.log_id is None  # refused before the middleware named it (401, admission 503)
        anonymous = call.principal is ANONYMOUS
        if refused:
            if anonymous and not self.settings.unauthenticated_tenant:
                return
            outcome.log_id = uuid7()
        try:
            record = build_record(call)
        except Exception:  # a record we cannot build must not fail the others
            log.exception("request_log_build_failed", request_id=call.request_id)
            return
        if refused:  # nobody vouched for this body: ids, status and error only
            strip_content(record)
            if anonymous:
                record.tenant = self.settings.unauthenticated_tenant
        self.writer.put(record)


__all__ = ["LoggingObserver"]
