"""Records off the request path: a bounded in-memory queue, written in batches by one background task,
spilling to a local append-only file when the store is down or slow, replayed when it is back.

- :meth:`RecordWriter.put` never waits: it appends to the queue (or, when the queue is full, to the
  spill file). The request path never touches the database.
- The writer task wakes every ``flush_interval`` seconds (or when a batch is full) and inserts up to
  ``batch_size`` records per statement. A failed or timed-out insert puts the batch in the spill
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
  rest: nothing is lost. A crash loses what is in memory: at most ``queue_size`` records, in practice
  the last ``flush_interval`` seconds of requests.
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

from .record import LogRecord

log = structlog.get_logger("respan_gateway.logging")

_encode = msgspec.json.Encoder().encode
_decode_record = msgspec.json.Decoder(LogRecord).decode


class SpillFiles:
    """The spill directory: this process's active file, and the replay of every unheld file."""

    def __init__(self, directory: str, prefix: str = "request_logs") -> None:
        self.dir = Path(directory)
        self.prefix = prefix
        self._fd: int | None = None
        self._path: Path | None = None
        self._seq = itertools.count(1)
        self.pending = 0  # records this process has spilled and not replayed yet (approximate across processes)

    def append(self, records: list[LogRecord]) -> None:
        self.append_lines([_encode(r) for r in records])

    def append_lines(self, lines: list[bytes]) -> None:
        """Append JSON lines (without their newline) and fsync."""
        if not lines:
            return
        if self._fd is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._path = self.dir / f"{self.prefix}-{os.getpid()}-{int(time.time() * 1000)}-{next(self._seq)}.jsonl"
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._fd = fd
        data = b"".join(line + b"\n" for line in lines)
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)
        self.pending += len(lines)

    def seal(self) -> None:
        """Close the active file (releasing its lock) so that a replay picks it up."""
        if self._fd is not None:
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

    async def replay(self, write: Any, batch_size: int, unreadable: Any) -> int:
        """Write every unheld spill file through ``write(batch)`` and delete it; returns records replayed.

        Lines that cannot be decoded go to ``unreadable(lines, path)``. A file that cannot be opened
        is skipped (logged); a failing ``write`` (the store is down) stops the replay, the file stays.
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
                records, bad = _read_records(fd)
                if bad:
                    unreadable(bad, path)
                for start in range(0, len(records), batch_size):
                    await write(records[start:start + batch_size])
                os.unlink(path)
                replayed += len(records)
                self.pending = max(0, self.pending - len(records) - len(bad))
            finally:
                os.close(fd)
        return replayed


def _read_records(fd: int) -> tuple[list[LogRecord], list[bytes]]:
    """The records of a spill file, and the lines that are not one (cut by a crash, or not UTF-8)."""
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    records, bad = [], []
    for line in b"".join(chunks).split(b"\n"):
        if not line.strip():
            continue
        try:
            records.append(_decode_record(line))
        except (msgspec.DecodeError, msgspec.ValidationError):
            bad.append(line)
    return records, bad


class RecordWriter:
    def __init__(self, store: Any, settings: Any) -> None:
        self.store = store
        self.settings = settings
        self.queue: collections.deque[LogRecord] = collections.deque()
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
        if self._closing or len(self.queue) >= self.settings.queue_size:
            # Memory is full (or the writer is gone): the file keeps the record, the replay stores it.
            self._spill([record])
            return
        self.queue.append(record)
        if len(self.queue) >= self.settings.batch_size and self._wake is not None:
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
            self._spill(list(self.queue))
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
                await self._write_batch(self._take())

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
                async with self._lock:
                    if time.monotonic() >= self._next_replay:
                        await self._replay()
                    while self.queue:
                        await self._write_batch(self._take())
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the writer die: the next tick tries again
                log.exception("request_log_writer_error")

    def _take(self) -> list[LogRecord]:
        n = min(len(self.queue), self.settings.batch_size)
        return [self.queue.popleft() for _ in range(n)]

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
        try:
            replayed = await self.spill.replay(self._store, self.settings.batch_size, self._quarantine_lines)
        except Exception as exc:
            self.store_up = False
            self._next_replay = time.monotonic() + self.settings.retry_interval
            log.warning("request_log_replay_failed", error=f"{type(exc).__name__}: {exc}")
            return
        self.replayed += replayed
        self._next_replay = time.monotonic() + self.settings.retry_interval
        if not self.store_up or replayed:
            log.info("request_log_store_back", replayed=replayed)
        self.store_up = True

    def _spill(self, records: list[LogRecord]) -> None:
        try:
            self.spill.append(records)
            self.spilled += len(records)
        except OSError:
            log.exception("request_log_spill_failed", lost=len(records))

    def stats(self) -> dict[str, Any]:
        return {"queue_depth": len(self.queue), "spill_pending": self.spill.pending, "store_up": self.store_up,
                "written": self.written, "spilled": self.spilled, "replayed": self.replayed,
                "write_failures": self.write_failures, "quarantined": self.quarantined}
