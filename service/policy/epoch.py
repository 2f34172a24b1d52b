"""The revocation epoch: one row every process checks on each request.

A policy change, a catalog change and a disabled client all move it (``bump_epoch``, or
a new catalog version), and every process then recompiles its policy and re-reads
clients' standing on its next request. Policy owns the row; auth moves it through
``bump_epoch`` and reads it through ``epoch_key`` (a SQLAlchemy connection) or
``driver_epoch_key`` (the per-request read on the raw driver, ``service.db.DriverReads``;
``SharedEpochReads`` decides when a request needs a read of its own).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from service.db import DriverReads, SqliteReads, utcnow
from service.policy.models import PolicyEpoch

EPOCH_ROW = 1

# One tiny statement, always one row (each part a primary-key or index lookup): the epoch
# row, and the newest catalog version. A policy change, a disabled client and a new
# catalog version all move this key. The newest version is ``max()``, which both
# databases answer from the primary key's end (``tests/test_query_plans.py``).
_EPOCH_KEY_SQL = (
    "SELECT (SELECT p.epoch FROM policy_epoch p WHERE p.id = ?), "
    "(SELECT p.token FROM policy_epoch p WHERE p.id = ?), "
    "(SELECT max(c.version) FROM catalog_versions c)"
)
_EPOCH_KEY = text(_EPOCH_KEY_SQL.replace("?", ":row"))

# (epoch, token, newest catalog version): equal keys mean nothing the policy depends on moved.
EpochKey = tuple[int, str, int | None]


def _key(row: Sequence[Any]) -> EpochKey:
    epoch, token, catalog_version = row[0], row[1], row[2]
    return (int(epoch or 0), str(token or ""), None if catalog_version is None else int(catalog_version))


async def epoch_key(conn: AsyncConnection) -> EpochKey:
    return _key((await conn.execute(_EPOCH_KEY, {"row": EPOCH_ROW})).one())


async def driver_epoch_key(reads: DriverReads) -> EpochKey:
    """``epoch_key`` on the raw driver: the per-request check, a few microseconds on SQLite."""
    return _key((await reads.rows(_EPOCH_KEY_SQL, (EPOCH_ROW, EPOCH_ROW)))[0])


class SharedEpochReads:
    """The per-request epoch read, shared by requests that arrive together, but never a
    read that began before a request arrived.

    Every request that arrives while a read is in flight waits for the next one, which
    starts as soon as the one in flight returns and serves all of them. So each request
    still gets a read that began after it arrived: a client disabled (or a policy changed)
    before the request came is seen by it, as with a read of its own. Under load this is
    one round trip per batch of concurrent requests instead of one each. One per process
    (``AuthRuntime.epochs``).

    On SQLite the read runs on the event loop without yielding, so nothing can join it.
    Instead the key is kept with the commit marker (``SqliteReads.commit_marker``, ``PRAGMA
    data_version``) taken just before it was read, and read again only when the marker has
    moved: an equal marker means no other connection of any process has committed since,
    so the key read then is still what a read now would return. A client disabled by a
    commit that returned before the request came has moved the marker, and the request
    reads the key.
    """

    def __init__(self) -> None:
        self._waiting: asyncio.Future[EpochKey] | None = None
        self._reader: asyncio.Task[None] | None = None
        # (the SQLite reads, their commit marker before the read, the key read).
        self._kept: tuple[SqliteReads, int, EpochKey] | None = None

    async def key(self, reads: DriverReads) -> EpochKey:
        if isinstance(reads, SqliteReads):
            return await self._sqlite_key(reads)
        waiting = self._waiting
        if waiting is None:
            waiting = self._waiting = asyncio.get_running_loop().create_future()
            # Marks a failure retrieved even if every waiter was cancelled meanwhile.
            waiting.add_done_callback(lambda done: done.cancelled() or done.exception())
            if self._reader is None:
                self._reader = asyncio.create_task(self._read(reads))
        return await asyncio.shield(waiting)

    async def _sqlite_key(self, reads: SqliteReads) -> EpochKey:
        # Taken before the read: a commit between the two moves it, and the next request
        # reads again (never the other way round).
        marker = reads.commit_marker()
        kept = self._kept
        if marker is not None and kept is not None and kept[0] is reads and kept[1] == marker:
            return kept[2]
        key = await driver_epoch_key(reads)
        self._kept = None if marker is None else (reads, marker, key)
        return key

    async def _read(self, reads: DriverReads) -> None:
        try:
            while (waiting := self._waiting) is not None:
                self._waiting = None  # later arrivals wait for the next read
                try:
                    key = await driver_epoch_key(reads)
                except Exception as exc:  # handed to every waiter, as their own read would be
                    waiting.set_exception(exc)
                else:
                    waiting.set_result(key)
        finally:
            self._reader = None


async def bump_epoch(session: AsyncSession) -> int:
    """Move the epoch on; every process recompiles on its next request."""
    token = uuid.uuid4().hex
    result = await session.execute(
        update(PolicyEpoch)
        .where(PolicyEpoch.id == EPOCH_ROW)
        .values(epoch=PolicyEpoch.epoch + 1, token=token, changed_at=utcnow())
        .returning(PolicyEpoch.epoch)
    )
    epoch = result.scalar_one_or_none()
    if epoch is None:
        session.add(PolicyEpoch(id=EPOCH_ROW, epoch=1, token=token))
        await session.flush()
        return 1
    return int(epoch)
