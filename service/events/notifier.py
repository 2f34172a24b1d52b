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
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from service.db import asyncpg_dsn

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


@asynccontextmanager
async def postgres_wakeups(database_url: str, notifier: EventNotifier) -> AsyncIterator[None]:
    """While open, a commit of an event in any process wakes ``notifier`` (LISTEN/NOTIFY).

    Nothing on SQLite. If the listening connection cannot be made, waiters fall back to
    polling the outbox, which they do anyway.
    """
    if not database_url.startswith("postgresql"):
        yield
        return
    connection: asyncpg.Connection | None = None
    try:
        connection = await asyncpg.connect(asyncpg_dsn(database_url), timeout=10)
        await connection.add_listener(PG_CHANNEL, lambda *_args: notifier.notify())
    except (OSError, asyncpg.PostgresError, TimeoutError):
        logger.warning("event wake-ups across processes unavailable; polling the outbox instead")
        connection = None
    try:
        yield
    finally:
        if connection is not None:
            await connection.close()
