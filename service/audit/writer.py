"""Appending to the audit log: in the caller's transaction, or through the batched writer.

``append_in_transaction`` puts an entry in a write's own transaction, so the change and
its entry commit together. ``AuditWriter`` is group commit for read-path entries.
``AfterRollback`` records a refused change: the request's transaction is rolled back, and
the entry goes through the batched writer, in a transaction of its own.

A handler awaits ``append(entry)``; it returns only once the entry's transaction has
committed. Entries that arrive while a batch is committing wait for the next one, so
under load many entries share one transaction (and one fsync). If a commit fails, every
entry of that batch gets ``AuditUnavailable`` and its handler releases no data.

On a SQLite file the batches go to ``SqliteBatches``: one thread owning one ``sqlite3``
connection, which runs a whole batch (BEGIN IMMEDIATE, executemany, COMMIT) in one call,
so the event loop hands off once per batch instead of once per statement. It waits for
SQLite's one write lock in short steps of its own, and leaves WAL checkpoints to a second
thread, so that neither lands inside a batch's wait (``bench/README.md``, the -c1 tail).

On PostgreSQL each batch is one statement in one round trip: it takes a
transaction-scoped advisory lock before inserting, so entry ids are handed out in commit
order across processes (the sequencer then gives leaf indices in id order without ever
skipping an entry still in flight), and, run on its own, commits before it returns.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol

import orjson
from fastapi import Depends, Request
from opentelemetry.trace import Link
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from service import tracing
from service.audit.errors import AuditUnavailable
from service.audit.schemas import AuditEntry, entry_canonical
from service.db import SessionDep, sqlite_file
from service.db import _sqlite_pragmas as sqlite_pragmas
from service.errors import FailingWrites, FailureLog

logger = logging.getLogger("tellonce.audit")

# pg_advisory_xact_lock key for "appending to the audit log" (ASCII 'audit-ap').
APPEND_LOCK_KEY = 0x61756469742D6170

# Run inside each batch transaction just before commit (tests raise in it). It gets the
# batch's connection: an ``AsyncConnection``, or the ``sqlite3.Connection`` of ``SqliteBatches``.
BeforeCommit = Callable[[Any], Awaitable[None]]
Pending = tuple[list["Values"], "asyncio.Future[list[int]]", Link | None]


def _joined(values: Iterable[str]) -> str:
    # Comma-wrapped so ``LIKE '%,name,%'`` matches whole names only.
    unique = sorted(set(values))
    return "," + ",".join(unique) + "," if unique else ""


FILTER_COLUMNS: tuple[str, ...] = (
    "time",
    "client_id",
    "department",
    "citizen_id",
    "action",
    "decision",
    "purpose",
    "owners",
    "fields",
)


def filter_values(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """The columns auditors filter on, derived from an entry's record, in ``FILTER_COLUMNS``
    order (``time`` as an instant).

    One rule: the writer stores these beside the canonical JSON, and ``audit verify``
    derives them again from that JSON and compares, so a changed column is caught.
    """
    time = datetime.fromisoformat(record["time"])
    if time.tzinfo is None:
        time = time.replace(tzinfo=UTC)
    return (
        time,
        record["client_id"],
        record["department"],
        record["citizen_id"],
        record["action"],
        record["decision"],
        record["purpose"],
        _joined(record["owners"]),
        _joined([*record["fields_requested"], *record["fields_released"]]),
    )


def filter_columns(record: Mapping[str, Any]) -> dict[str, Any]:
    """``filter_values`` by column name."""
    return dict(zip(FILTER_COLUMNS, filter_values(record), strict=True))


_COLUMNS: tuple[str, ...] = (*FILTER_COLUMNS, "canonical")
Values = tuple[Any, ...]
"""A stored row in ``_COLUMNS`` order: the filter columns (``time`` as an instant), then
the canonical JSON."""


def entry_values(entry: AuditEntry) -> Values:
    """The stored row of ``entry``: its record is made once, without copying the entry's
    lists (``stored_record``), and gives both the columns auditors filter on and the
    canonical JSON."""
    record = entry.stored_record()
    return (*filter_values(record), entry_canonical(record))


_CITIZEN_COLUMN = FILTER_COLUMNS.index("citizen_id")


def entry_values_for_citizens(entry: AuditEntry, citizen_ids: Sequence[str]) -> list[Values]:
    """``entry_values`` of ``entry`` with each of ``citizen_ids`` in turn as its citizen,
    for a bulk registration, whose entries differ in nothing else. The record and its
    canonical JSON are made once, with a marker where the citizen id goes; each row sets
    the id (JSON-encoded as ``entry_canonical`` encodes it) in both. tests/audit holds the
    rows to ``entry_values`` of each entry."""
    record = entry.to_record()
    marker = f"citizen-{uuid.uuid4().hex}"
    record["citizen_id"] = marker
    before, found, after = entry_canonical(record).partition(f'"{marker}"')
    filters = list(filter_values(record))
    rows: list[Values] = []
    for citizen_id in citizen_ids:
        filters[_CITIZEN_COLUMN] = citizen_id
        try:
            encoded = orjson.dumps(citizen_id).decode()
        except orjson.JSONEncodeError:
            encoded = None
        if not found or encoded is None:
            # Not a plain id (orjson refuses it): the entry itself, the contract's way.
            rows.append(entry_values(entry.model_copy(update={"citizen_id": citizen_id})))
            continue
        rows.append((*filters, before + encoded + after))
    return rows


def entry_row(entry: AuditEntry) -> dict[str, Any]:
    """``entry_values`` by column name."""
    return dict(zip(_COLUMNS, entry_values(entry), strict=True))


_SQLITE_INSERT = (
    f"INSERT INTO audit_entries ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"  # noqa: S608
)
# PostgreSQL: one statement per batch, each column sent as one array. It takes the
# append lock first (every row joins the one-row lock, so no row, and no id, is made
# before the lock is held), and inserts the rows in their order (ORDER BY n), so the
# sequence hands out ids in that order. On its own (autocommit) the statement is its own
# transaction: the lock is held until it has committed, in one round trip.
_PG_TYPES = {"time": "timestamptz"}
_PG_INSERT = (
    f"WITH append_lock AS MATERIALIZED (SELECT pg_advisory_xact_lock({APPEND_LOCK_KEY}) AS held) "  # noqa: S608
    f"INSERT INTO audit_entries ({', '.join(_COLUMNS)}) "
    f"SELECT {', '.join(_COLUMNS)} FROM append_lock CROSS JOIN unnest("
    + ", ".join(f"${i}::{_PG_TYPES.get(column, 'text')}[]" for i, column in enumerate(_COLUMNS, 1))
    + f") WITH ORDINALITY AS batch({', '.join(_COLUMNS)}, n) ORDER BY n RETURNING id"
)


def sqlite_time_text(time: datetime) -> str:
    """The exact text SQLAlchemy's SQLite DateTime stores ("YYYY-MM-DD HH:MM:SS.ffffff",
    the year in 4 digits), so text filters compare alike."""
    utc = time if time.tzinfo is UTC else time.astimezone(UTC)
    return utc.isoformat(" ", "microseconds")[:26]


async def insert_entries(conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Insert rows (``entry_row``) in order and return their ids."""
    return await insert_values(conn, [tuple(row[column] for column in _COLUMNS) for row in rows])


async def insert_values(conn: AsyncConnection, rows: Sequence[Values]) -> list[int]:
    """Insert rows (``entry_values``) in order and return their ids, under the append lock
    on PostgreSQL. Both databases take the rows through the driver in one statement:
    SQLAlchemy's own multi-row insert costs more per row than the database does."""
    if not rows:
        return []
    if conn.dialect.name == "postgresql":
        columns = tuple(list(column) for column in zip(*rows, strict=True))
        result = await conn.exec_driver_sql(_PG_INSERT, columns)
        # Ids rise in insertion order, so sorted they are in the rows' order.
        return sorted(int(row_id) for row_id in result.scalars())
    # SQLite: the transaction holds the single write lock from its first insert, so the
    # rowids of one executemany are consecutive and end at max(id). A plain executemany
    # is several times faster than RETURNING, which SQLAlchemy runs row by row here.
    await conn.exec_driver_sql(_SQLITE_INSERT, [(sqlite_time_text(row[0]), *row[1:]) for row in rows])
    last = int((await conn.exec_driver_sql("SELECT max(id) FROM audit_entries")).scalar_one())
    return list(range(last - len(rows) + 1, last + 1))


async def append_in_transaction(conn: AsyncConnection, entry: AuditEntry) -> int:
    """Append ``entry`` in the caller's transaction (for writes: same commit as the change).

    On PostgreSQL this takes the audit append lock until the caller's transaction ends,
    so call it as the last statement before commit. If the entry cannot be written the
    caller's transaction must not commit: ``AuditUnavailable`` (503) is raised.
    """
    try:
        return (await insert_values(conn, [entry_values(entry)]))[0]
    except SQLAlchemyError as exc:
        raise AuditUnavailable("The audit entry could not be written; nothing was changed.") from exc


async def append_many_in_transaction(conn: AsyncConnection, entries: Sequence[AuditEntry]) -> list[int]:
    """``append_in_transaction`` for many entries at once (bulk registration), in order."""
    return await append_rows_in_transaction(conn, [entry_values(entry) for entry in entries])


async def append_rows_in_transaction(conn: AsyncConnection, rows: Sequence[Values]) -> list[int]:
    """``append_many_in_transaction`` for entries already made into their rows
    (``entry_values``, ``entry_values_for_citizens``)."""
    try:
        return await insert_values(conn, rows)
    except SQLAlchemyError as exc:
        raise AuditUnavailable("The audit entries could not be written; nothing was changed.") from exc


class EntrySink(Protocol):
    async def append(self, entry: AuditEntry) -> int:
        """Return once ``entry`` is durable; raise ``AuditUnavailable`` if it is not."""
        ...


# How long a SQLite batch waits for the write lock (the serving processes' writers, the
# sequencer and the notice worker share it) before it fails closed; the engine's busy
# timeout is as long.
LOCK_WAIT_SECONDS = 10.0
# The writer tries again after these sleeps (the last repeating) instead of SQLite's busy
# handler, which sleeps 1, 2, 5, 10, 15 ms... between tries: a batch that found the lock
# held for half a millisecond waited 1 to 3 ms, and one held for 2 ms waited 8.
_LOCK_RETRY_SLEEPS = (0.00005, 0.0001, 0.0002, 0.0005)
# A PASSIVE checkpoint is started once this many rows, or batches, have committed since the
# last one: about SQLite's own 1,000-page threshold at a secured read's 8 pages a row.
CHECKPOINT_ROWS = 1000
CHECKPOINT_BATCHES = 128
# Once a checkpoint finds the log this many pages long, the writer's thread checkpoints
# the few pages written since, before its next batch, so that batch starts the log over.
WAL_RESTART_FRAMES = 4000
# A log that grew longer than this (while readers kept it from starting over) is cut back
# to it when it next starts over. SQLite otherwise keeps the file at its longest.
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024


def _busy(exc: sqlite3.Error) -> bool:
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY


class SqliteBatches:
    """Batches into a SQLite file on one thread that owns one ``sqlite3`` connection.

    Through aiosqlite a batch was about six hand-offs (begin, insert, ``max(id)``, commit,
    the pool's reset), each waiting for a turn of the busy event loop. Here ``write`` runs
    the whole transaction in one call on the thread and the loop awaits one future. The
    connection has the service engine's pragmas (WAL, synchronous=FULL: the commit is on
    disk before ``write`` returns). After any failure it is closed and the next batch opens
    a fresh one, so a replaced or restored database file is picked up.

    Two things that made the latency of a lone read jump (measured under ``wrk -c1``) are
    kept out of a batch's path:

    - waiting for the write lock: the connection's busy timeout is 0 and ``BEGIN
      IMMEDIATE`` is tried again after sleeps of 50 to 500 us, for up to
      ``LOCK_WAIT_SECONDS`` (then the batch fails, and its callers get 503);
    - WAL checkpoints: SQLite runs one inside whichever COMMIT takes the log past 1,000
      pages, so that batch's callers also waited for the pages to be copied and the
      database file synced. The writer's connection never checkpoints
      (``wal_autocheckpoint=0``); a second thread runs a PASSIVE checkpoint on its own
      connection, alongside the next batches, once ``CHECKPOINT_ROWS`` rows or
      ``CHECKPOINT_BATCHES`` batches have committed since the last. Other processes'
      connections keep SQLite's automatic checkpoints.

    SQLite starts the log over (writes from its beginning again) only when a write begins
    with every page of the log already copied into the database. Under steady load a batch
    commits while each checkpoint on the other thread runs, so that never happened, and the
    ``-wal`` file grew by every batch: a gigabyte in a minute of ``wrk -c1``, and slower
    commits, since each one extended the file. So when a checkpoint reports the log at
    ``WAL_RESTART_FRAMES`` pages or more, the writer's thread runs a PASSIVE checkpoint of
    its own before its next batch, which copies only the pages written since the other one
    (nothing of this process writes meanwhile), and that batch starts the log over. A reader
    on an older snapshot can keep it from doing so; the next checkpoint then tries again.
    The writer's connection also has ``journal_size_limit``, so a log that grew meanwhile
    is cut back when it starts over."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        # Checkpoints: their thread and connection; the one running; what committed since.
        self._checkpointer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-checkpoint")
        self._checkpoint_connection: sqlite3.Connection | None = None
        self._checkpoint: Future[int | None] | None = None
        self._rows_since_checkpoint = 0
        self._batches_since_checkpoint = 0
        # Set on the writer's thread when a checkpoint found the log long: the next batch
        # checkpoints first, and so starts the log over.
        self._restart_log = False
        self.checkpoints = 0
        # Checkpoint failures, on either thread: a line per run of them (a full disk fails
        # every one), then "usable again" (``FailureLog``); the lock keeps its count whole.
        self._checkpoint_failures = FailureLog(logger, "audit writer WAL checkpoints")
        self._checkpoint_log_lock = threading.Lock()
        # 1 while a batch's transaction is open on the connection (the metrics read it).
        self.in_use = 0

    async def write(self, rows: Sequence[Values], before_commit: BeforeCommit | None = None) -> list[int]:
        """Insert ``rows`` in one committed transaction; their ids, in order."""
        loop = asyncio.get_running_loop()
        self.in_use = 1
        try:
            if before_commit is None:
                return await loop.run_in_executor(self._thread, self._write, rows, True)
            ids = await loop.run_in_executor(self._thread, self._write, rows, False)
            try:
                await before_commit(self._connection)
            except BaseException:
                await loop.run_in_executor(self._thread, self._end, "ROLLBACK", 0)
                raise
            await loop.run_in_executor(self._thread, self._end, "COMMIT", len(rows))
            return ids
        finally:
            self.in_use = 0

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
        self._thread.shutdown()
        # Waits for a checkpoint still running.
        self._checkpointer.shutdown()
        if self._checkpoint_connection is not None:
            self._checkpoint_connection.close()
            self._checkpoint_connection = None

    # On the writer thread only.
    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            sqlite_pragmas(connection, None)
            connection.execute("PRAGMA busy_timeout=0")
            connection.execute("PRAGMA wal_autocheckpoint=0")
            connection.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
        except BaseException:
            connection.close()
            raise
        return connection

    def _begin(self, connection: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE``, tried again in short sleeps while another connection
        holds the write lock, for up to ``LOCK_WAIT_SECONDS``."""
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        tries = 0
        while True:
            try:
                connection.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(_LOCK_RETRY_SLEEPS[min(tries, len(_LOCK_RETRY_SLEEPS) - 1)])
            tries += 1

    def _write(self, rows: Sequence[Values], commit: bool) -> list[int]:
        if self._connection is None:
            self._connection = self._open()
        connection = self._connection
        if self._restart_log:
            self._restart_log = False
            self._top_up(connection)
        try:
            # IMMEDIATE: the write lock from the start, so the rowids are consecutive.
            self._begin(connection)
            connection.executemany(_SQLITE_INSERT, [(sqlite_time_text(row[0]), *row[1:]) for row in rows])
            last = int(connection.execute("SELECT last_insert_rowid()").fetchone()[0])
            if commit:
                connection.execute("COMMIT")
        except BaseException:
            self._close()
            raise
        if commit:
            self._committed(len(rows))
        return list(range(last - len(rows) + 1, last + 1))

    def _end(self, statement: str, rows: int) -> None:
        if self._connection is None:
            raise sqlite3.OperationalError("the audit writer's connection was lost")
        try:
            self._connection.execute(statement)
        except BaseException:
            self._close()
            raise
        if statement == "COMMIT":
            self._committed(rows)

    def _committed(self, rows: int) -> None:
        """Count a committed batch; start a checkpoint on the other thread when due and
        none is running; mark the log to start over when the last one found it long."""
        self._rows_since_checkpoint += rows
        self._batches_since_checkpoint += 1
        finished = self._checkpoint
        if finished is not None and finished.done():
            self._checkpoint = None
            # SQLite's errors are logged in the checkpoint; a future keeps any other to itself.
            error = finished.exception()
            if error is not None:
                logger.warning("audit writer: WAL checkpoint failed", exc_info=error)
            elif (finished.result() or 0) >= WAL_RESTART_FRAMES:
                self._restart_log = True
        due = (
            self._rows_since_checkpoint >= CHECKPOINT_ROWS
            or self._batches_since_checkpoint >= CHECKPOINT_BATCHES
        )
        if due and self._checkpoint is None:
            self._rows_since_checkpoint = self._batches_since_checkpoint = 0
            self._checkpoint = self._checkpointer.submit(self._run_checkpoint)

    def _top_up(self, connection: sqlite3.Connection) -> None:
        """A PASSIVE checkpoint on the writer's connection between batches: it copies what
        the checkpoint thread's last one left (the pages written while it ran), so the next
        ``BEGIN IMMEDIATE`` finds the whole log copied and starts it over. Busy (the other
        thread is checkpointing) or failed, it is left for the next time."""
        try:
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            self._checkpoint_failed("audit writer: WAL checkpoint before a batch failed", exc)
        else:
            self._checkpoint_succeeded()

    def _checkpoint_failed(self, message: str, exc: sqlite3.Error) -> None:
        with self._checkpoint_log_lock:
            self._checkpoint_failures.failed(message, exc)

    def _checkpoint_succeeded(self) -> None:
        if self._checkpoint_failures.failing:
            with self._checkpoint_log_lock:
                self._checkpoint_failures.succeeded()

    def _close(self) -> None:
        # Closing with a transaction open rolls it back.
        if self._connection is not None:
            connection, self._connection = self._connection, None
            connection.close()

    # On the checkpoint thread only.
    def _run_checkpoint(self) -> int | None:
        """One PASSIVE checkpoint: it copies what it can without waiting for any lock and
        never blocks a writer. Returns the log's length in pages, or None when it did not
        run. A failure is logged, a line per run of them (``_checkpoint_failures``); the next
        one opens a fresh connection."""
        try:
            if self._checkpoint_connection is None:
                connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                self._checkpoint_connection = connection
                # synchronous=FULL among them: the log is synced before pages are copied
                # out of it, and the database file after.
                sqlite_pragmas(connection, None)
            # (busy, pages in the log, pages copied); -1 pages when it could not run.
            _busy, log_pages, _copied = self._checkpoint_connection.execute(
                "PRAGMA wal_checkpoint(PASSIVE)"
            ).fetchone()
            self.checkpoints += 1
        except sqlite3.Error as exc:
            self._checkpoint_failed("audit writer: WAL checkpoint failed", exc)
            if self._checkpoint_connection is not None:
                self._checkpoint_connection.close()
                self._checkpoint_connection = None
            return None
        self._checkpoint_succeeded()
        return int(log_pages) if log_pages >= 0 else None


class AuditWriter:
    """Group commit on the app's event loop: on a SQLite file through ``SqliteBatches``,
    otherwise on the engine's pooled connections."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        max_batch: int = 2000,
        before_commit: BeforeCommit | None = None,
        on_batch: Callable[[int], None] | None = None,
        on_failure: Callable[[int], None] | None = None,
        failing_writes: FailingWrites | None = None,
    ) -> None:
        self.engine = engine
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.max_batch = max_batch
        # A hook run inside each batch transaction just before commit; tests raise in it.
        self.before_commit = before_commit
        # Told each batch's size once it commits, or once it fails (the metrics use them).
        self.on_batch = on_batch
        self.on_failure = on_failure
        self.batches_committed = 0
        self.entries_committed = 0
        # Each waiting append: its rows, the future its handler awaits, and a trace link.
        self._pending: list[Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._sqlite: SqliteBatches | None = None
        # Its failed batches make the process not ready; a committed one ready again.
        self._failures = FailureLog(logger, "audit writer", writes=failing_writes)

    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            path = sqlite_file(self.engine)
            self._sqlite = SqliteBatches(path) if path is not None else None
            self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def stop(self) -> None:
        """Commit what is queued, then stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._sqlite is not None:
            await self._sqlite.close()
            self._sqlite = None

    async def append(self, entry: AuditEntry) -> int:
        """Return the entry's id once it is durably committed; raise ``AuditUnavailable`` if not."""
        return (await self.append_many([entry]))[0]

    async def append_many(self, entries: Sequence[AuditEntry]) -> list[int]:
        if self._task is None or self._stopping:
            raise AuditUnavailable("The audit writer is not running; no data is released.")
        if not entries:
            return []
        rows = [entry_values(entry) for entry in entries]
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._pending.append((rows, future, tracing.current_link()))
        self._wake.set()
        return await future

    def connections_in_use(self) -> int:
        """Database connections this writer holds now: on a SQLite file its one connection
        while a batch is written, otherwise those checked out of its engine's pool."""
        if self._sqlite is not None:
            return self._sqlite.in_use
        checkedout = getattr(self.engine.sync_engine.pool, "checkedout", None)
        return int(checkedout()) if checkedout is not None else 0

    def _take_batch(self) -> list[Pending]:
        taken, count = 0, 0
        for rows, _future, _link in self._pending:
            if taken and count + len(rows) > self.max_batch:
                break
            taken += 1
            count += len(rows)
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        return batch

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                await self._commit(self._take_batch())
            if self._stopping:
                return

    async def _write(self, rows: list[Values]) -> list[int]:
        if self._sqlite is not None:
            return await self._sqlite.write(rows, self.before_commit)
        if self.engine.dialect.name == "postgresql" and self.before_commit is None:
            # The insert alone, as its own transaction: one round trip per batch, which
            # returns once the batch has committed.
            async with self._autocommit.connect() as conn:
                return await insert_values(conn, rows)
        async with self.engine.begin() as conn:
            ids = await insert_values(conn, rows)
            if self.before_commit is not None:
                await self.before_commit(conn)
            return ids

    async def _commit(self, batch: list[Pending]) -> None:
        rows = [row for entry_rows, _future, _link in batch for row in entry_rows]
        links = [link for _rows, _future, link in batch if link is not None]
        try:
            with tracing.linked_span("audit.batch", links, entries=len(rows)):
                ids = await self._write(rows)
        except Exception as exc:
            self._failures.failed("audit batch of %d entries failed to commit", exc, len(rows))
            if self.on_failure is not None:
                self.on_failure(len(rows))
            for _rows, future, _link in batch:
                if not future.done():
                    future.set_exception(AuditUnavailable("The audit log could not record this access."))
            return
        self._failures.succeeded()
        self.batches_committed += 1
        self.entries_committed += len(rows)
        if self.on_batch is not None:
            self.on_batch(len(rows))
        offset = 0
        for entry_rows, future, _link in batch:
            if not future.done():
                future.set_result(ids[offset : offset + len(entry_rows)])
            offset += len(entry_rows)


async def get_audit_writer(request: Request) -> AuditWriter:
    """The writer for a request that may release data. Fails closed (503) when the writer
    is down, or when witnesses are configured with a grace period and the log has gone
    unwitnessed for longer than that."""
    writer: AuditWriter | None = getattr(request.app.state, "audit_writer", None)
    if writer is None:
        raise AuditUnavailable("The audit writer is not running; no data is released.")
    gate = getattr(request.app.state, "witness_gate", None)
    if gate is not None:
        gate.check()
    return writer


AuditWriterDep = Annotated[AuditWriter, Depends(get_audit_writer)]


class AfterRollback:
    """An ``EntrySink`` for a request refused a change: the request's transaction is rolled
    back first (nothing of the refused change stays, and on SQLite the write lock it may
    hold, a console session's touch for one, is let go, where the writer would wait for
    it), then the app's batched writer commits the entry in a transaction of its own. It
    returns once the entry is durable; ``AuditUnavailable`` (503) while the writer is down.

    The writer is looked up when a refusal is recorded, not when the request starts, so a
    change that is made (audited in its own transaction) does not depend on it."""

    def __init__(self, session: AsyncSession, state: Any) -> None:
        self.session = session
        self._state = state

    async def append(self, entry: AuditEntry) -> int:
        await self.session.rollback()
        writer: AuditWriter | None = getattr(self._state, "audit_writer", None)
        if writer is None:
            raise AuditUnavailable("The audit writer is not running; nothing was changed.")
        return await writer.append(entry)


async def get_refusal_writer(request: Request, session: SessionDep) -> EntrySink:
    """Where a refused change of the request's session is recorded (``AfterRollback``)."""
    return AfterRollback(session, request.app.state)


RefusalWriterDep = Annotated[EntrySink, Depends(get_refusal_writer)]
