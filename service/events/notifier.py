"""Waking long-polls and the dispatcher as soon as an event is committed in this process.

Writers call ``notify()`` after their transaction commits. On PostgreSQL the outbox
append also sends ``NOTIFY tellonce_events``, which PostgreSQL delivers only when the
write commits; ``postgres_wakeups`` listens for it, so other processes wake too. On
SQLite, waiters in other processes look at the outbox every
``TELLONCE_EVENTS_POLL_INTERVAL_SECONDS``. A wake-up only says "look again": the outbox
is the truth, so a spurious or missed wake-up costs latency, never correctness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from service.db import KeptAliveConnection, asyncpg_dsn

logger = logging.getLogger("tellonce.events")


class EventNotifier:
    """Wakes every coroutine waiting on it, on whatever event loop each one runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[asyncio.Future[None]] = set()
        # Counts notifications: a waiter that saw generation N and finds N+1 has missed
        # nothing, because it re-reads the outbox after every wake-up anyway.
        self.generation = 0

    def notify(self) -> None:
        """Wake every waiter. Safe to call from any thread and from outside a loop."""
        with self._lock:
            self.generation += 1
            waiters, self._waiters = self._waiters, set()
        for future in waiters:
            loop = future.get_loop()
            if loop.is_closed():
                continue
            loop.call_soon_threadsafe(_wake, future)

    async def wait(self, timeout: float) -> bool:
        """Wait for the next notification, at most ``timeout`` seconds; ``True`` if woken."""
        if timeout <= 0:
            return False
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._waiters.add(future)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            return False
        finally:
            with self._lock:
                self._waiters.discard(future)
        return True


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# The process-wide notifier: the records write path and every app of this process share it.
feed_notifier = EventNotifier()


# The PostgreSQL channel ``record_change`` notifies; PostgreSQL delivers it at commit only.
PG_CHANNEL = "tellonce_events"


# How long after losing its connection (or failing to make one) the listener tries again.
RELISTEN_SECONDS = 1.0

# How long a listening connection is given to say goodbye to the server before it is
# dropped (one a middlebox forgot never answers).
CLOSE_SECONDS = 5.0

# What making, using or closing the listening connection raises when the database cannot
# be reached or the connection is gone.
_CONNECTION_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


@asynccontextmanager
async def postgres_wakeups(
    database_url: str, notifier: EventNotifier, recycle_seconds: float = 0
) -> AsyncIterator[None]:
    """While open, a commit of an event in any process wakes ``notifier`` (LISTEN/NOTIFY).

    Nothing on SQLite. If the listening connection cannot be made, or is lost (a database
    restart, a failover), waiters fall back to polling the outbox, which they do anyway,
    and the listener connects again every ``RELISTEN_SECONDS`` until it can.

    With ``recycle_seconds`` (``db_pool_recycle_seconds``, as the pools), the listening
    connection is replaced that often, so one a firewall or PgBouncer dropped without a
    word is not kept for long: a new connection listens before the old one is closed, and
    waiters are woken once after the swap for whatever the old one was still owed.
    """
    if not database_url.startswith("postgresql"):
        yield
        return
    dsn = asyncpg_dsn(database_url)
    # The first connection is made before the block runs, so its wake-ups are live in it.
    connection = await _listen(dsn, notifier)
    if connection is None:
        logger.warning("event wake-ups across processes unavailable; polling the outbox instead")
    stop = asyncio.Event()
    listening = asyncio.create_task(
        _keep_listening(dsn, notifier, connection, stop, recycle_seconds), name="event-wakeups"
    )
    try:
        yield
    finally:
        stop.set()
        await listening


async def _listen(dsn: str, notifier: EventNotifier) -> asyncpg.Connection | None:
    """A connection listening on ``PG_CHANNEL`` for ``notifier``, or None if none can be made."""
    try:
        connection = await asyncpg.connect(dsn, timeout=10, connection_class=KeptAliveConnection)
    except _CONNECTION_ERRORS:
        return None
    try:
        await connection.add_listener(PG_CHANNEL, lambda *_args: notifier.notify())
    except _CONNECTION_ERRORS:
        connection.terminate()
        return None
    return connection


async def _close(connection: asyncpg.Connection) -> None:
    """Close ``connection``, politely if the server answers within ``CLOSE_SECONDS``."""
    with contextlib.suppress(*_CONNECTION_ERRORS):
        await connection.close(timeout=CLOSE_SECONDS)


async def _keep_listening(
    dsn: str,
    notifier: EventNotifier,
    connection: asyncpg.Connection | None,
    stop: asyncio.Event,
    recycle_seconds: float,
) -> None:
    """Until ``stop``: whenever the listening connection is lost, make another; every
    ``recycle_seconds`` (0: never), replace the one there is."""
    while True:
        if connection is not None:
            lost = _lost(connection)
            while not await _first_of(lost, stop, timeout=recycle_seconds or None):
                fresh = await _listen(dsn, notifier)
                if fresh is None:
                    continue  # the old one stays until the next period, or its loss
                # Both listen for a moment, so every commit is heard by one of them; one
                # only the old one heard may still have been on its way to it when it was
                # closed, so waiters look again once after the swap.
                old, connection, lost = connection, fresh, _lost(fresh)
                await _close(old)
                notifier.notify()
            if stop.is_set():
                await _close(connection)
                return
            logger.warning(
                "event wake-ups across processes lost with their database connection; listening again"
            )
            connection = None
        if await _first_of(stop, timeout=RELISTEN_SECONDS):
            return
        connection = await _listen(dsn, notifier)
        if connection is not None:
            # Commits while nobody listened sent their wake-ups nowhere: look again now.
            notifier.notify()


def _lost(connection: asyncpg.Connection) -> asyncio.Event:
    """An event set when ``connection`` closes (the server ended it, or it broke)."""
    lost = asyncio.Event()
    connection.add_termination_listener(lambda _connection: lost.set())
    if connection.is_closed():
        lost.set()
    return lost


async def _first_of(*events: asyncio.Event, timeout: float | None = None) -> bool:
    """Wait until one of ``events`` is set, at most ``timeout`` seconds; whether one was."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        done, _pending = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    return bool(done)
