"""Records off the request path: a bounded in-memory queue, written in batches by one background task,
spilling to a local append-only file when the store is down or slow, replayed when it is back.

- :meth:`RecordWriter.put` never waits: it appends to the queue (or, when the queue is full, by
  ``queue_size`` records or ``queue_bytes``, to the spill file, fsync'ed by the writer's next tick:
  a record the process wrote to the file survives its crash). The request path never touches the
  database.
- The writer task wakes every ``flush_interval`` seconds (or when a batch is full) and inserts up to
  ``batch_size`` records per statement (and a quarter of ``queue_bytes`` at most: the rows it
  encodes double a batch while it is written). A failed or timed-out insert puts the batch in the spill
  file and marks the store down; while it is down, batches go straight to the file, and every
  ``retry_interval`` the writer replays the spill files into the store.
- Inserts are idempotent (records carry their id), so a batch that was in fact written before its
  timeout, or a file replayed twice after a crash, never duplicates a record.
- Spill files: ``<spill_dir>/request_logs-<pid>-<n>.jsonl``, one JSON record per line, fsync'ed per
  batch. Each process appends to its own file and holds an ``flock`` on it; any process replays the
  files nobody holds (its own sealed ones, and those of dead processes), so nothing depends on
  restarting the same worker.
- A record the store refuses (an integer beyond the column, text it cannot hold) never blocks the
  others: the batch it is in is written again record by record, and what the store refuses is
  **quarantined**: appended to ``<spill_dir>/quarantined_request_logs-<pid>-<ms>-<n>.jsonl`` (same
  format as a spill file; never replayed on its own: an operator renames it to
  ``request_logs-....jsonl`` once the cause is fixed), counted in ``quarantined`` and logged as
  ``request_log_quarantined`` with its id. A spill line that cannot be read is quarantined as well;
  a replay goes on past a bad line or an unreadable file.
- :meth:`close` (graceful shutdown) writes what is queued, within ``shutdown_timeout``, and spills the
  rest: nothing is lost. A crash loses what is in memory: at most ``queue_size`` records or
  ``queue_bytes``, in practice the last ``flush_interval`` seconds of requests.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import itertools
import os
import time
from pathlib import Path
from typing import Any

import msgspec
import structlog

from respan_gateway.database import RowRejected

from .record import LogRecord, stored_size

log = structlog.get_logger("respan_gateway.logging")

_encoder = msgspec.json.Encoder()
_encode = _encoder.encode
_decode_record = msgspec.json.Decoder(LogRecord).decode


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing)."""
    global _malloc_trim
    if _malloc_trim is None:
        import ctypes  # only once a load of big records has come and gone

        _malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", False)
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


class SpillFiles:
    """The spill directory: this process's active file, and the replay of every unheld file."""

    def __init__(self, directory: str, prefix: str = "request_logs") -> None:
        self.dir = Path(directory)
        self.prefix = prefix
        self._fd: int | None = None
        self._path: Path | None = None
        self._seq = itertools.count(1)
        self.pending = 0  # records this process has spilled and not replayed yet (approximate across processes)
        self.replayed_bytes = 0  # lines read back by replays, in all
        self._unsynced = False

    def append(self, records: list[LogRecord], sync: bool = True) -> None:
        """Append ``records`` as JSON lines, encoded into one buffer; fsync unless ``sync`` is false
        (then :meth:`sync` does, later)."""
        data = bytearray()
        for record in records:
            _encoder.encode_into(record, data, -1)
            data += b"\n"
        self._write(data, len(records), sync)

    def append_lines(self, lines: list[bytes]) -> None:
        """Append JSON lines (without their newline) and fsync."""
        self._write(b"".join(line + b"\n" for line in lines), len(lines), True)

    def _write(self, data: bytes | bytearray, count: int, sync: bool) -> None:
        if not count:
            return
        if self._fd is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._path = self.dir / f"{self.prefix}-{os.getpid()}-{int(time.time() * 1000)}-{next(self._seq)}.jsonl"
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._fd = fd
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if sync:
            os.fsync(self._fd)
        self._unsynced = not sync
        self.pending += count

    def sync(self) -> None:
        """fsync what was appended without (one call for every record spilled since)."""
        if self._unsynced and self._fd is not None:
            os.fsync(self._fd)
        self._unsynced = False

    def seal(self) -> None:
        """Close the active file (releasing its lock) so that a replay picks it up."""
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None
            self._path = None

    def files(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.glob(f"{self.prefix}-*.jsonl") if p != self._path)

    def has_files(self) -> bool:
        return bool(self.files())

    @property
    def path(self) -> Path | None:
        return self._path

    def count_waiting(self) -> int:
        """Records in the files waiting for a replay (lines; read once, at start-up)."""
        total = 0
        for path in self.files():
            try:
                with path.open("rb") as f:
                    total += sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
            except OSError:
                continue
        return total

    async def replay(self, write: Any, batch_size: int, unreadable: Any, batch_bytes: int) -> int:
        """Write every unheld spill file through ``write(batch)`` and delete it; returns records replayed.

        A file is read a batch at a time (``batch_size`` records, ``batch_bytes`` of lines at most):
        what an outage left on disk never comes back into memory at once. Lines that cannot be
        decoded go to ``unreadable(lines, path)``. A file that cannot be opened is skipped (logged);
        a failing ``write`` (the store is down) stops the replay, the file stays.
        """
        replayed = 0
        for path in self.files():
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            except OSError as exc:  # unreadable (permissions...): the other files still go in
                log.warning("spill_file_unreadable", file=str(path), error=str(exc))
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live process is still appending to it
                if os.fstat(fd).st_nlink == 0:
                    continue  # replayed and deleted by another process meanwhile
                count = 0
                with open(fd, "rb", closefd=False) as lines:
                    for records, bad, size in _read_batches(lines, batch_size, batch_bytes):
                        if bad:
                            unreadable(bad, path)
                        if records:
                            await write(records)
                        count += len(records) + len(bad)
                        replayed += len(records)
                        self.replayed_bytes += size
                os.unlink(path)
                self.pending = max(0, self.pending - count)
            finally:
                os.close(fd)
        return replayed


def _read_batches(lines: Any, batch_size: int, batch_bytes: int) -> Any:
    """The records of a spill file in batches, each with the lines that are not a record (cut by a
    crash, or not UTF-8) and the bytes it read."""
    records: list[LogRecord] = []
    bad: list[bytes] = []
    size = 0
    for line in lines:
        line = line.rstrip(b"\n")
        if not line.strip():
            continue
        try:
            records.append(_decode_record(line))
        except (msgspec.DecodeError, msgspec.ValidationError):
            bad.append(line)
        size += len(line)
        if len(records) >= batch_size or size >= batch_bytes:
            yield records, bad, size
            records, bad, size = [], [], 0
    if records or bad:
        yield records, bad, size


class RecordWriter:
    def __init__(self, store: Any, settings: Any) -> None:
        self.store = store
        self.settings = settings
        # Each record with its stored_size; queued_bytes sums them, with the batch being written.
        self.queue: collections.deque[tuple[LogRecord, int]] = collections.deque()
        self.queued_bytes = 0
        # A batch stops at a quarter of the bound: its rows (the JSON fields as text) double it while written.
        self._batch_bytes = max(1, settings.queue_bytes // 4)
        self._untrimmed = 0  # bytes of records written or spilled since the heap was last trimmed
        self.spill = SpillFiles(settings.spill_dir)
        self.quarantine = SpillFiles(settings.spill_dir, prefix="quarantined_request_logs")
        self.store_up = True
        self.written = 0
        self.spilled = 0
        self.replayed = 0
        self.write_failures = 0
        self.quarantined = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        self._next_replay = 0.0
        self._closing = False

    # -- the request path ---------------------------------------------------------------------
    def put(self, record: LogRecord) -> None:
        size = stored_size(record)
        if (self._closing or len(self.queue) >= self.settings.queue_size
                or self.queued_bytes + size > self.settings.queue_bytes):
            # Memory is full (or the writer is gone): the file keeps the record, the replay stores it;
            # the fsync waits for the writer's next tick (one for all), not the request path.
            self._spill([record], sync=self._closing)
            self._untrimmed += size
            return
        self.queue.append((record, size))
        self.queued_bytes += size
        if (len(self.queue) >= self.settings.batch_size or self.queued_bytes >= self._batch_bytes) and self._wake is not None:
            self._wake.set()

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._next_replay = 0.0  # replay leftovers (a previous run's spill) right away
        self.spill.pending = self.spill.count_waiting()
        self._task = asyncio.create_task(self._run(), name="request-log-writer")

    async def close(self) -> None:
        """Graceful shutdown: write the queue (spill what cannot be written in time), stop the task."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        deadline = time.monotonic() + self.settings.shutdown_timeout
        try:
            await asyncio.wait_for(self.flush(), max(0.1, deadline - time.monotonic()))
        except (asyncio.TimeoutError, Exception):
            pass
        self._closing = True
        if self.queue:
            self._spill([record for record, _ in self.queue])
            self.queued_bytes -= sum(size for _, size in self.queue)
            self.queue.clear()
        self.spill.seal()
        self.quarantine.seal()
        log.info("request_log_writer_closed", written=self.written, spilled=self.spilled,
                 spill_pending=self.spill.pending, quarantined=self.quarantined)

    async def flush(self) -> None:
        """Write everything queued now (spilling on failure)."""
        assert self._lock is not None
        async with self._lock:
            while self.queue:
                await self._write_next()

    # -- the writer task ----------------------------------------------------------------------
    async def _run(self) -> None:
        assert self._wake is not None and self._lock is not None
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.flush_interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                self.spill.sync()
                idle = not self.queue
                async with self._lock:
                    if time.monotonic() >= self._next_replay:
                        await self._replay()
                    while self.queue:
                        await self._write_next()
                if idle and self._untrimmed >= self._batch_bytes:
                    # The load that sent big records has stopped (a tick with nothing to write): what
                    # they freed is mostly scattered between live objects, where glibc keeps it mapped.
                    self._untrimmed = 0
                    release_free_memory()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the writer die: the next tick tries again
                log.exception("request_log_writer_error")

    async def _write_next(self) -> None:
        """Write (or spill) the next batch; its bytes stay counted in ``queued_bytes`` until then."""
        batch, size, queue = [], 0, self.queue
        while queue and len(batch) < self.settings.batch_size and (not batch or size + queue[0][1] <= self._batch_bytes):
            record, weight = queue.popleft()
            batch.append(record)
            size += weight
        try:
            await self._write_batch(batch)
        finally:
            self.queued_bytes -= size
            self._untrimmed += size

    async def _write_batch(self, batch: list[LogRecord]) -> None:
        if not self.store_up:
            self._spill(batch)
            return
        try:
            await self._store(batch)
        except asyncio.CancelledError:
            self._spill(batch)
            raise
        except Exception as exc:
            self.write_failures += 1
            self.store_up = False
            self._next_replay = time.monotonic() + self.settings.retry_interval
            log.warning("request_log_store_down", error=f"{type(exc).__name__}: {exc}", spilled=len(batch))
            self._spill(batch)

    async def _store(self, batch: list[LogRecord]) -> None:
        """Insert ``batch``; records the store refuses are quarantined. Raises when the store is down."""
        try:
            await self._insert(batch)
            return
        except RowRejected as exc:
            if len(batch) == 1:
                self._quarantine_record(batch[0], exc)
                return
        for record in batch:  # find the refused ones: the rest of the batch is written
            try:
                await self._insert([record])
            except RowRejected as exc:
                self._quarantine_record(record, exc)

    async def _insert(self, batch: list[LogRecord]) -> None:
        await asyncio.wait_for(self.store.insert(batch), self.settings.write_timeout)
        self.written += len(batch)

    def _quarantine_record(self, record: LogRecord, exc: Exception) -> None:
        if self._quarantine([_encode(record)]):
            log.error("request_log_quarantined", unique_id=record.unique_id, tenant=record.tenant,
                      error=str(exc), file=str(self.quarantine.path))

    def _quarantine_lines(self, lines: list[bytes], source: Path) -> None:
        if self._quarantine(lines):
            log.error("request_log_quarantined", lines=len(lines), error="spill line is not a readable record",
                      source=str(source), file=str(self.quarantine.path))

    def _quarantine(self, lines: list[bytes]) -> bool:
        try:
            self.quarantine.append_lines(lines)
        except OSError:
            log.exception("request_log_quarantine_failed", lost=len(lines))
            return False
        self.quarantined += len(lines)
        return True

    async def _replay(self) -> None:
        self.spill.seal()
        if not self.spill.has_files():
            self.spill.pending = 0  # also what other (dead) processes had left, replayed by now
            self.store_up = True
            self._next_replay = time.monotonic() + self.settings.retry_interval
            return
        before = self.spill.replayed_bytes
        try:
            replayed = await self.spill.replay(self._store, self.settings.batch_size, self._quarantine_lines,
                                               self._batch_bytes)
        except Exception as exc:
            self.store_up = False
            self._next_replay = time.monotonic() + self.settings.retry_interval
            log.warning("request_log_replay_failed", error=f"{type(exc).__name__}: {exc}")
            return
        finally:
            self._untrimmed += self.spill.replayed_bytes - before
        self.replayed += replayed
        self._next_replay = time.monotonic() + self.settings.retry_interval
        if not self.store_up or replayed:
            log.info("request_log_store_back", replayed=replayed)
        self.store_up = True

    def _spill(self, records: list[LogRecord], sync: bool = True) -> None:
        try:
            self.spill.append(records, sync)
            self.spilled += len(records)
        except OSError:
            log.exception("request_log_spill_failed", lost=len(records))

    def stats(self) -> dict[str, Any]:
        return {"queue_depth": len(self.queue), "queue_bytes": self.queued_bytes, "spill_pending": self.spill.pending,
                "store_up": self.store_up, "written": self.written, "spilled": self.spilled, "replayed": self.replayed,
                "write_failures": self.write_failures, "quarantined": self.quarantined}
