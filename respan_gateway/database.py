"""The gateway's database: one per process, shared by every plugin that keeps state.

Log records, and later prompts, customers and API keys, live in one database chosen by ``[database]
url``: a SQLite file (the embedded default; WAL mode, one connection on one thread per process) or
PostgreSQL (``asyncpg``, one pool per process; several replicas share it).

A plugin declares its tables through the ``register_stores`` hook: a store name and its ordered
:class:`Migration` list. At start-up the gateway applies the migrations a store has not seen yet
(``respan_schema_versions`` remembers each store's version; on PostgreSQL under an advisory lock, so
replicas starting together migrate once). When the database is unreachable at start-up the gateway
starts anyway and retries on the next use: whoever writes must be ready for
:class:`StoreUnavailable` (the logging plugin spills to a file), and for :class:`RowRejected` (the
server is fine but refuses the data of a row: an integer out of range, text it cannot store).

A SQLite file deleted or replaced while the gateway runs is noticed before the next batch write (and
by ``/readyz``): the connection is closed and the file opened again, migrations included, so writes
never go on into an unlinked file.

SQL is written once for both backends with ``$1, $2...`` placeholders (PostgreSQL's; turned into
SQLite's ``?1, ?2...``). :attr:`Database.dialect` tells the few places that differ.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec
import structlog

from .config import DatabaseSettings

T = TypeVar("T")

log = structlog.get_logger("respan_gateway.database")

Dialect = Literal["sqlite", "postgres"]

# sqlite3 binds only exact int/float/str as they are; every None and bool parameter (a log record has
# some twenty) first misses its adapter table and then fails two attribute lookups, one raising a
# formatted AttributeError: 6% of a request's instructions (callgrind). Adapters that bind the same.
sqlite3.register_adapter(type(None), lambda value: None)
sqlite3.register_adapter(bool, int)


class StoreUnavailable(Exception):
    """The database cannot be reached or did not answer in time."""


class RowRejected(Exception):
    """The database refused the data of a statement (not the connection): retrying it is useless."""


class Migration(msgspec.Struct, frozen=True):
    """One schema step of a store: ``version`` (1, 2, ...) and its SQL for each dialect.

    The SQL may hold several statements separated by ``;``, or be a list of statements, each run
    whole: the form for a statement with ``;`` inside (a trigger's body, a PostgreSQL function).
    """

    version: int
    sqlite: str | list[str]
    postgres: str | list[str]


_PLACEHOLDER = re.compile(r"\$(\d+)")


@functools.lru_cache(maxsize=512)
def _sqlite_placeholders(sql: str) -> str:
    """``$1`` -> ``?1``, once per statement text: the log store's INSERT has some 80 placeholders, and
    re.sub's template expansion of each cost more per batch than building the rows."""
    return _PLACEHOLDER.sub(r"?\1", sql)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _statements(sql: str | list[str]) -> list[str]:
    if isinstance(sql, list):
        return [s.strip() for s in sql if s.strip()]
    return [s.strip() for s in sql.split(";") if s.strip()]


class Database:
    """Async access to the database: :meth:`execute`, :meth:`executemany`, :meth:`fetch`, :meth:`fetchval`."""

    def __init__(self, settings: DatabaseSettings, stores: dict[str, list[Migration]]) -> None:
        self.settings = settings
        self.stores = stores
        url = settings.url
        if url.startswith("sqlite:"):
            self.dialect: Dialect = "sqlite"
            # sqlite:///relative/path or sqlite:////absolute/path (SQLAlchemy's convention).
            self.path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else ""
            if not self.path:
                raise ValueError("`database.url`: a sqlite URL needs a path, e.g. sqlite:///data/respan.sqlite3")
        elif url.startswith(("postgresql://", "postgres://")):
            self.dialect = "postgres"
            if settings.schema and not _IDENT.match(settings.schema):
                raise ValueError(f"`database.schema`: {settings.schema!r} is not a plain identifier")
        else:
            raise ValueError(f"`database.url`: expected sqlite:///PATH or postgresql://..., got {url.split(':')[0]}:...")
        self._conn: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._pool: Any = None
        self._connected = False
        self._connecting: asyncio.Lock | None = None
        self._last_attempt = 0.0
        self._file_id: tuple[int, int] | None = None  # SQLite: (st_dev, st_ino) of the file opened

    @property
    def connected(self) -> bool:
        return self._connected

    # -- life cycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect and migrate; an unreachable database is logged, and retried on the next use."""
        try:
            await self._ensure(force=True)
        except StoreUnavailable as exc:
            log.warning("database_unavailable", dialect=self.dialect, error=str(exc))

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 5)
            except Exception:
                pool.terminate()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await self._run(conn.close)
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None
        self._connected = False

    async def ping(self) -> bool:
        try:
            await self._check_file()
            await self.fetchval("SELECT 1")
            return True
        except StoreUnavailable:
            return False

    async def _ensure(self, force: bool = False) -> None:
        if self._connected:
            return
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._connected:
                return
            # At most one connection attempt per second: a down database is not hammered.
            if not force and time.monotonic() - self._last_attempt < 1.0:
                raise StoreUnavailable("the database is unavailable (retrying)")
            self._last_attempt = time.monotonic()
            try:
                if self.dialect == "sqlite":
                    await self._open_sqlite()
                else:
                    await self._open_postgres()
                await self._migrate()
            except StoreUnavailable:
                raise
            except Exception as exc:
                await self._drop_pool()
                raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None
            self._connected = True

    # -- SQLite -----------------------------------------------------------------------------------
    async def _open_sqlite(self) -> None:
        if self._thread is None:
            # One connection used from one thread: SQLite serialises writers anyway.
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        if self._conn is None:
            def connect() -> sqlite3.Connection:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                       timeout=self.settings.command_timeout)
                conn.row_factory = sqlite3.Row
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                # Temporary storage in memory, chiefly the statement journal: an insert that runs a
                # trigger that may abort (the log records' metadata index) keeps the pages it changes
                # that its batch changed before, so that it alone could be undone; in a file (past
                # 64 KiB) that was ~35 KB written per record for ~2.6 KB stored, 15-20 us of system
                # time per record. The reads' sorts are bounded by their LIMIT or their groups.
                conn.execute("PRAGMA temp_store=MEMORY")
                conn.execute(f"PRAGMA busy_timeout={int(self.settings.command_timeout * 1000)}")
                return conn

            self._conn = await self._run(connect)
            self._file_id = _file_id(self.path)

    async def _check_file(self) -> None:
        """SQLite: reopen (and migrate) when the file was deleted or replaced since it was opened.

        One ``stat`` per call; called once per batch write and by ``/readyz``, not per query."""
        if self.dialect != "sqlite" or self._conn is None or _file_id(self.path) == self._file_id:
            return
        log.warning("database_file_replaced", path=self.path, action="reopening")
        conn, self._conn, self._connected = self._conn, None, False
        # Closed before the new file is opened: closing checkpoints and removes the old -wal/-shm
        # files, which a new database of the same name must not pick up.
        try:
            await self._run(conn.close)
        except sqlite3.Error as exc:
            log.warning("database_close_failed", error=str(exc))
        await self._ensure(force=True)

    async def _run(self, fn: Any, *args: Any) -> Any:
        assert self._thread is not None
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _sqlite_call(self, fn: Any) -> Any:
        async def run() -> Any:
            try:
                return await self._run(fn)
            except sqlite3.OperationalError as exc:  # locked beyond busy_timeout, disk full, I/O error
                raise StoreUnavailable(f"sqlite: {exc}") from None
        return run()

    # -- PostgreSQL -------------------------------------------------------------------------------
    async def _open_postgres(self) -> None:
        import asyncpg

        settings = self.settings
        server_settings = {"application_name": "respan-gateway"}
        if settings.schema:
            # Created by _migrate, under the migration lock: replicas starting together do not race.
            server_settings["search_path"] = settings.schema
        self._pool = await asyncpg.create_pool(
            settings.url, min_size=1, max_size=max(1, settings.pool_size), timeout=settings.connect_timeout,
            command_timeout=settings.command_timeout, server_settings=server_settings,
        )

    async def _drop_pool(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.terminate()

    async def _pg(self, method: str, sql: str, *args: Any) -> Any:
        if self._pool is None:
            raise StoreUnavailable("postgres: not connected")
        try:
            async with self._pool.acquire(timeout=self.settings.connect_timeout) as conn:
                return await getattr(conn, method)(sql, *args)
        except _pg_unavailable() as exc:
            raise self._pg_error(exc) from None

    def _pg_error(self, exc: BaseException) -> Exception:
        """What an asyncpg error means: the data was refused (:class:`RowRejected`) or the server is gone."""
        if isinstance(exc, _pg_rejected()):
            return RowRejected(f"postgres: {type(exc).__name__}: {exc}")
        self._connected = False
        return StoreUnavailable(f"postgres: {type(exc).__name__}: {exc}")

    # -- migrations -------------------------------------------------------------------------------
    async def _migrate(self) -> None:
        if self.dialect == "sqlite":
            def migrate() -> None:
                conn = self._conn
                assert conn is not None
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute("CREATE TABLE IF NOT EXISTS respan_schema_versions (store TEXT PRIMARY KEY, version INTEGER NOT NULL)")
                    for store, migrations in self.stores.items():
                        row = conn.execute("SELECT version FROM respan_schema_versions WHERE store = ?", (store,)).fetchone()
                        current = row[0] if row else 0
                        for m in sorted(migrations, key=lambda m: m.version):
                            if m.version > current:
                                for statement in _statements(m.sqlite):
                                    conn.execute(statement)
                                current = m.version
                        conn.execute("INSERT INTO respan_schema_versions (store, version) VALUES (?, ?) "
                                     "ON CONFLICT (store) DO UPDATE SET version = excluded.version", (store, current))
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise

            await self._run(migrate)
            return
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(7250125001)")  # one migrator at a time
            if self.settings.schema:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.settings.schema}"')
            await conn.execute("CREATE TABLE IF NOT EXISTS respan_schema_versions (store TEXT PRIMARY KEY, version INTEGER NOT NULL)")
            for store, migrations in self.stores.items():
                current = await conn.fetchval("SELECT version FROM respan_schema_versions WHERE store = $1", store) or 0
                for m in sorted(migrations, key=lambda m: m.version):
                    if m.version > current:
                        for statement in _statements(m.postgres):
                            await conn.execute(statement)
                        current = m.version
                await conn.execute("INSERT INTO respan_schema_versions (store, version) VALUES ($1, $2) "
                                   "ON CONFLICT (store) DO UPDATE SET version = excluded.version", store, current)

    # -- queries ----------------------------------------------------------------------------------
    def sql(self, sql: str) -> str:
        """``sql`` in this database's placeholder style."""
        return _sqlite_placeholders(sql) if self.dialect == "sqlite" else sql

    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; the number of rows it changed."""
        await self._ensure()
        if self.dialect == "sqlite":
            conn, query = self._conn, self.sql(sql)
            return await self._sqlite_call(lambda: conn.execute(query, args).rowcount)
        status = await self._pg("execute", sql, *args)
        tail = status.rsplit(" ", 1)[-1] if isinstance(status, str) else ""
        return int(tail) if tail.isdigit() else 0

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for each row, all in one transaction (all rows or none).

        Raises :class:`RowRejected` when the database refuses a row's data (the caller may write the
        rows one by one to find it), :class:`StoreUnavailable` when it cannot be reached."""
        rows = list(rows)
        if rows:
            async def many(tx: Transaction) -> None:
                await tx.executemany(sql, rows)

            await self.transaction(many)

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        await self._ensure()
        if self.dialect == "sqlite":
            conn, query = self._conn, self.sql(sql)
            return await self._sqlite_call(lambda: [dict(r) for r in conn.execute(query, args).fetchall()])
        return [dict(r) for r in await self._pg("fetch", sql, *args)]

    async def fetchval(self, sql: str, *args: Any) -> Any:
        rows = await self.fetch(sql, *args)
        if not rows:
            return None
        return next(iter(rows[0].values()))

    async def transaction(self, work: Callable[[Transaction], Awaitable[T]], *, before: Sequence[str] = ()) -> T:
        """``await work(tx)`` in one transaction, ``before`` (a lock) run first: its statements all
        commit or none (``work`` raising rolls back). Raises as :meth:`executemany`.

        ``work`` awaits nothing but ``tx``'s methods: on SQLite it runs to its end in the database's
        thread, in one pass from BEGIN to COMMIT (SQLite's write lock is not held across turns of the
        event loop, and no other statement of this process runs inside it)."""
        await self._check_file()
        await self._ensure()
        if self.dialect == "sqlite":
            conn = self._conn

            def run() -> T:
                assert conn is not None
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in before:
                        conn.execute(statement)
                    result = _to_the_end(work(_SqliteTransaction(self, conn)))
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
                return result

            try:
                return await self._sqlite_call(run)
            except _SQLITE_REJECTED as exc:
                raise RowRejected(f"sqlite: {type(exc).__name__}: {exc}") from None
        if self._pool is None:
            raise StoreUnavailable("postgres: not connected")
        try:
            async with self._pool.acquire(timeout=self.settings.connect_timeout) as conn, conn.transaction():
                for statement in before:
                    await conn.execute(statement)
                return await work(_PostgresTransaction(conn))
        except (*_pg_unavailable(), *_pg_rejected()) as exc:
            raise self._pg_error(exc) from None


def _to_the_end(coroutine: Awaitable[T]) -> T:
    """Run a coroutine that never suspends (it awaits only a :class:`_SqliteTransaction`'s methods,
    which return at once) to its result, synchronously."""
    step = coroutine.__await__()
    try:
        step.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    step.close()
    raise RuntimeError("a SQLite transaction's work awaited something other than its statements")


class Transaction:
    """The statements of one :meth:`Database.transaction` (placeholders ``$1``, ``$2``... on both)."""

    async def execute(self, sql: str, *args: Any) -> None:
        raise NotImplementedError

    async def executemany(self, sql: str, rows: list[Sequence[Any]]) -> None:
        raise NotImplementedError

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """The rows, as tuples in the order of the SELECT's columns."""
        raise NotImplementedError


class _SqliteTransaction(Transaction):
    """Statements run at once, in the database's thread (see :meth:`Database.transaction`)."""

    def __init__(self, db: Database, conn: sqlite3.Connection) -> None:
        self.sql, self.conn = db.sql, conn

    async def execute(self, sql: str, *args: Any) -> None:
        self.conn.execute(self.sql(sql), args)

    async def executemany(self, sql: str, rows: list[Sequence[Any]]) -> None:
        if rows:
            self.conn.executemany(self.sql(sql), rows)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.conn.execute(self.sql(sql), args).fetchall()]


class _PostgresTransaction(Transaction):
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def execute(self, sql: str, *args: Any) -> None:
        await self.conn.execute(sql, *args)

    async def executemany(self, sql: str, rows: list[Sequence[Any]]) -> None:
        if rows:
            await self.conn.executemany(sql, rows)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self.conn.fetch(sql, *args)]


# What sqlite3 raises for a row it cannot store: an int beyond 64 bits (OverflowError), a str that is
# not valid UTF-8, a value of a type it cannot bind, a constraint.
_SQLITE_REJECTED = (OverflowError, UnicodeError, sqlite3.InterfaceError, sqlite3.IntegrityError, sqlite3.DataError)


def _rollback(conn: sqlite3.Connection) -> None:
    """ROLLBACK after a failed statement; its own failure (SQLite already rolled back after an I/O
    error or a full disk) is logged, so that the error raised is the one that caused it."""
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        log.warning("database_rollback_failed", error=f"{type(exc).__name__}: {exc}")


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _pg_rejected() -> tuple[type[BaseException], ...]:
    """asyncpg's errors for data it or the server refuses: a value it cannot encode (client side,
    e.g. an int out of BIGINT range), a data exception (class 22) or a constraint (class 23)."""
    import asyncpg.exceptions as e

    return (e._base.DataError, e.DataError, e.IntegrityConstraintViolationError)


def _pg_unavailable() -> tuple[type[BaseException], ...]:
    """asyncpg's errors that mean "the server is not there (now)", not "the SQL is wrong"."""
    import asyncpg.exceptions as e

    return (OSError, asyncio.TimeoutError, e.PostgresConnectionError, e.InterfaceError, e.CannotConnectNowError,
            e.QueryCanceledError, e.OperatorInterventionError, e.TooManyConnectionsError)


__all__ = ["Database", "Migration", "RowRejected", "StoreUnavailable"]
