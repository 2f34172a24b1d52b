"""SQLite's write lock, handed out in turn to this process's SQLAlchemy connections.

A SQLite database has one write lock. A connection that finds it taken waits in SQLite's
busy handler, which sleeps and tries again (after 1, 2, 5 ... then every 100 ms) and keeps
no queue: whoever tries while the lock is free takes it. Through aiosqlite a write
transaction holds the lock from its first INSERT, UPDATE or DELETE to its COMMIT, across
one hand-off to the event loop per statement: under the demo's load on two cores a field
write held it 21 ms at the median and 74 ms at the 90th percentile, and the lock was taken
most of every second. Waiters polling every 100 ms lost to each other, and to the audit
writer (which tries again every 50 to 500 us), for seconds on end: field writes waited up to
5.5 s, one waited out its 10 s busy timeout (503), and the witness submitter, whose engine
waits 250 ms, gave up ("database is locked", SQLITE_BUSY) 6 to 13 times in 30 s.

So every engine ``service.db.create_engine`` makes on a SQLite file takes a turn, before the
statement that starts a write transaction (the one pysqlite puts its BEGIN in front of, or
the ``BEGIN IMMEDIATE`` of ``service.db.begin_on_sqlite``), from one first-come-first-served
queue per database file and event loop, shared by all the engines of the process, and gives
it back when that transaction ends. Only one of them could write at a time anyway; now
they wait in order, each woken as the turn comes free, and SQLite's busy handler is left
with the short waits behind the connections outside the queue (the audit writer's and the
sequencer's own ``sqlite3`` connections, and other processes, a ``tellonce import`` among
them). A turn is given back as the COMMIT or ROLLBACK is sent: the
next writer's first statement may wait in the busy handler for that commit to finish writing
(milliseconds).

A connection waits for its turn at most the service's busy timeout (10 s), then fails as
SQLite would have ("database is locked"; a request answers 503).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import weakref
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import AdaptedConnection, Connection, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine

# The statements that take the write lock: those before which pysqlite (legacy transaction
# control, Python 3.11) opens a transaction, and a transaction begun as a writing one.
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "BEGIN IMMEDIATE", "BEGIN EXCLUSIVE")
# Where a connection keeps the turn it holds (its pool record's ``info``, which lives as
# long as the driver connection).
_TURN = "tellonce_sqlite_write_turn"


class WriteTurns:
    """The queue of one database file on one event loop (``asyncio.Lock`` wakes its
    waiters in the order they came and lets no one in ahead of them)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = asyncio.Lock()

    async def take(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._lock.acquire()
        except TimeoutError:
            raise sqlite3.OperationalError(
                f"database is locked: no turn to write within {timeout:g} s"
            ) from None

    @property
    def taken(self) -> bool:
        return self._lock.locked()

    def give_back(self) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self._lock.release()
        elif not self.loop.is_closed():
            # A connection returned to its pool from another thread (garbage collected).
            self.loop.call_soon_threadsafe(self._lock.release)


_queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, WriteTurns]] = (
    weakref.WeakKeyDictionary()
)


def turns_for(path: str) -> WriteTurns:
    """The queue of the database file ``path`` on the running event loop."""
    path = os.path.abspath(path)
    loop = asyncio.get_running_loop()
    queues = _queues.setdefault(loop, {})
    turns = queues.get(path)
    if turns is None:
        turns = queues[path] = WriteTurns(loop)
    return turns


def _starts_write(statement: str) -> bool:
    return statement.lstrip()[:15].upper().startswith(_WRITES)


def _in_transaction(conn: Connection) -> bool:
    """Whether the driver connection (aiosqlite's, over ``sqlite3``) has a transaction open."""
    driver = conn.connection.driver_connection
    return driver is not None and bool(driver.in_transaction)


def _give_back(info: dict[str, Any]) -> None:
    turns: WriteTurns | None = info.pop(_TURN, None)
    if turns is not None:
        turns.give_back()


def queue_writers(engine: AsyncEngine, path: str, timeout: float) -> None:
    """Make ``engine``'s connections to the SQLite file ``path`` write in turn (see above)."""
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _take_turn(
        conn: Connection,
        _cursor: Any,
        statement: str,
        parameters: Any,
        _context: Any,
        _executemany: bool,
    ) -> tuple[str, Any]:
        info = conn.connection.info
        adapted = conn.connection.dbapi_connection
        if _TURN not in info and isinstance(adapted, AdaptedConnection) and _starts_write(statement):
            # On the event loop, from inside SQLAlchemy's synchronous execute.
            info[_TURN] = adapted.run_async(lambda _driver: _take(path, timeout))
        return statement, parameters

    @event.listens_for(sync_engine, "after_cursor_execute")
    def _after_statement(conn: Connection, *_args: Any) -> None:
        # A write in autocommit mode (``isolation_level="AUTOCOMMIT"``) ends with its statement.
        if _TURN in conn.connection.info and not _in_transaction(conn):
            _give_back(conn.connection.info)

    @event.listens_for(sync_engine, "handle_error")
    def _after_error(context: ExceptionContext) -> None:
        # A write that failed before its transaction began (no turn to hold on to).
        conn = context.connection
        if conn is None or conn.invalidated or _TURN not in conn.connection.info:
            return
        if not _in_transaction(conn):
            _give_back(conn.connection.info)

    # These run as the COMMIT or ROLLBACK is sent (SQLAlchemy has no event after it).
    @event.listens_for(sync_engine, "commit")
    def _at_commit(conn: Connection) -> None:
        _give_back(conn.connection.info)

    @event.listens_for(sync_engine, "rollback")
    def _at_rollback(conn: Connection) -> None:
        _give_back(conn.connection.info)

    # However a connection leaves use, it leaves its turn.
    @event.listens_for(sync_engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        _give_back(record.info)

    @event.listens_for(sync_engine, "invalidate")
    def _invalidated(_dbapi_connection: Any, record: Any, _exception: Any) -> None:
        _give_back(record.info)


async def _take(path: str, timeout: float) -> WriteTurns:
    turns = turns_for(path)
    await turns.take(timeout)
    return turns
