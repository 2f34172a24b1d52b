"""The sequencer: leaf indices in commit order, the Merkle tree, signed checkpoints.

Each round reads and computes first, on a read-only connection: the sequencer's state,
the entries after the last one sequenced (in id order), their leaves and the tree's new
nodes, and a signed checkpoint when one is due. Only then does it write, in one short
transaction that starts by updating the single ``audit_sequencer`` row on condition that
it still holds the state the round read. That write locks the row (PostgreSQL) or the
database (SQLite), so however many processes run a sequencer, rounds commit one at a
time and each builds on the state the previous one left; a round whose state was moved
meanwhile writes nothing, and the next starts from the new state. Hashing and signing
happen outside the write lock, so the audit writers of the serving processes wait for a
round's inserts only, not for its computation. On a SQLite file the write runs whole on a
thread with a connection of its own, so the lock is held for the statements and the
commit only, never across turns of the event loop.

The writers' append lock makes id order the commit order, so no entry that commits later
can have an id below one already sequenced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
from sqlalchemy import Connection, Engine, event, insert, select, update
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import NullPool

from service.audit import merkle
from service.audit import repository as audit_repository
from service.audit.checkpoint import Checkpoint, NoteSigner
from service.audit.models import AuditCheckpoint, AuditEntryRow, AuditLeaf, AuditNode, AuditSequencerState
from service.db import PostgresReads, SqliteReads, asyncpg_dsn, sqlite_file, utcnow
from service.db import _sqlite_pragmas as sqlite_pragmas
from service.errors import FailureLog

logger = logging.getLogger("tellonce.audit.sequencer")


@dataclass
class SequencerConfig:
    origin: str
    checkpoint_every: int = 1000
    checkpoint_interval: float = 1.0
    batch_size: int = 5000
    poll_interval: float = 0.05
    # The idle probe's connection on PostgreSQL: ``Settings.db_pool_recycle_seconds``.
    pool_recycle_seconds: float = 0


@dataclass(frozen=True)
class _Round:
    """A round computed from the state ``read`` (tree size, last entry id, last checkpoint
    size): what it adds, and the checkpoint (root hash, signed note) if one is due."""

    read: tuple[int, int, int]
    leaves: list[dict[str, int]]
    nodes: list[dict[str, object]]
    size: int
    last_entry_id: int
    checkpoint: tuple[bytes, str] | None
    prepared_at: float


# How long a SQLite round's write waits for the write lock before it gives up; the round
# runs again at the next poll.
SQLITE_LOCK_WAIT_MS = 250


def _sqlite_writes(path: str) -> Engine:
    """A synchronous engine on ``path`` for a round's write on a thread. No pool: a round
    opens a connection and closes it, so nothing is left open between rounds or after
    the last.

    Its connections have the service's pragmas but two: a short busy timeout, and
    ``synchronous=NORMAL``. SQLite holds its one write lock through a commit's fsync, so a
    round committed with FULL kept the serving processes' audit batches waiting for the
    disk (a round's commit took 5 ms at the median on the busy bench machine). With
    NORMAL the round's commit is not synced by itself; it becomes durable with the next
    synced commit of any connection (every audit batch, the notice worker's: the WAL is
    one file, synced whole) or the next checkpoint. A power cut can lose the last rounds
    and nothing else; WAL checksums drop them whole, and the next round recomputes them
    from the entries, which are synced before any data is released: leaves and nodes
    depend only on the entries in id order, and a checkpoint of a size signed before is
    the same note again
    (Ed25519 signatures are deterministic)."""
    engine = create_sync_engine(f"sqlite:///{path}", poolclass=NullPool)

    def _pragmas(dbapi_connection: Any, record: Any) -> None:
        sqlite_pragmas(dbapi_connection, record)
        dbapi_connection.execute(f"PRAGMA busy_timeout={SQLITE_LOCK_WAIT_MS}")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    event.listen(engine, "connect", _pragmas)
    return engine


class Sequencer:
    def __init__(self, engine: AsyncEngine, signer: NoteSigner, config: SequencerConfig) -> None:
        self.engine = engine
        # Through aiosqlite each statement of the write was a hand-off to a thread and back
        # to the loop while the round held SQLite's one write lock: from its first statement
        # to the end of its commit a round's write took 5 ms (p50) to 450 ms on the busy
        # two-core bench machine, and the serving processes' audit batches waited behind it.
        path = sqlite_file(engine)
        self._sqlite_path = path
        self._sqlite_writes = _sqlite_writes(path) if path is not None else None
        self.signer = signer
        self.config = config
        self._range: merkle.CompactRange | None = None
        # The interval counts from start-up: monotonic time is seconds since boot, so a
        # zero here would make the first round's checkpoint depend on the host's uptime.
        self._last_checkpoint_at = time.monotonic()
        # Set once a round that signed a checkpoint has committed: the witness submitter
        # in the same process starts at once instead of at its next poll.
        self.checkpoint_signed = asyncio.Event()
        self._signed_this_round = False
        # Set by a round that found nothing to add and no checkpoint owed: until some
        # connection commits, the next round would find the same.
        self._settled = False

    async def _load_range(self, conn: AsyncConnection, size: int) -> merkle.CompactRange:
        keys = merkle.CompactRange.keys_for(size)
        nodes = await audit_repository.read_nodes(conn, keys)
        return merkle.CompactRange(size, [nodes[key] for key in keys])

    async def run_once(self) -> int:
        """Sequence what has committed since the last round; return how many leaves were added."""
        self._signed_this_round = False
        self._settled = False
        try:
            async with self.engine.connect() as conn:
                prepared = await self._prepare(conn)
                await conn.rollback()
            if prepared is None:
                return 0
            stored = await self._write(prepared)
        except Exception:
            # The in-memory edge may be ahead of what committed: reload it next round.
            self._range = None
            raise
        if not stored:
            # Another sequencer moved the state since this round read it: start again from it.
            self._range = None
            return 0
        if prepared.checkpoint is not None:
            self._last_checkpoint_at = prepared.prepared_at
            self._signed_this_round = True
            self.checkpoint_signed.set()
        return len(prepared.leaves)

    async def _prepare(self, conn: AsyncConnection) -> _Round | None:
        """Read the state and the entries after it, and compute the round: its leaves, new
        nodes and checkpoint (signed), or None when there is nothing to do. Read-only."""
        state = AuditSequencerState
        size, last_entry_id, checkpoint_size = (
            await conn.execute(
                select(state.tree_size, state.last_entry_id, state.last_checkpoint_size).where(state.id == 1)
            )
        ).one()
        rows = (
            await conn.execute(
                select(AuditEntryRow.id, AuditEntryRow.canonical)
                .where(AuditEntryRow.id > last_entry_id)
                .order_by(AuditEntryRow.id)
                .limit(self.config.batch_size)
            )
        ).all()
        now = time.monotonic()
        if not rows and not (
            size > checkpoint_size and now - self._last_checkpoint_at >= self.config.checkpoint_interval
        ):
            # Settled unless entries wait for a checkpoint that only time will make due.
            self._settled = size <= checkpoint_size
            return None
        if self._range is None or self._range.size != size:
            self._range = await self._load_range(conn, size)
        compact = self._range
        leaves: list[dict[str, int]] = []
        nodes: list[dict[str, object]] = []
        for entry_id, canonical in rows:
            leaves.append({"leaf_index": compact.size, "entry_id": entry_id})
            for level, index, digest in compact.append(merkle.leaf_hash(canonical.encode())):
                nodes.append({"level": level, "index": index, "hash": digest})
        new_size = compact.size
        due = new_size > checkpoint_size and (
            new_size - checkpoint_size >= self.config.checkpoint_every
            or now - self._last_checkpoint_at >= self.config.checkpoint_interval
        )
        checkpoint = None
        if due:
            root = compact.root()
            checkpoint = (root, self.signer.sign(Checkpoint(self.config.origin, new_size, root).body()))
        return _Round(
            read=(size, last_entry_id, checkpoint_size),
            leaves=leaves,
            nodes=nodes,
            size=new_size,
            last_entry_id=rows[-1][0] if rows else last_entry_id,
            checkpoint=checkpoint,
            prepared_at=now,
        )

    async def _write(self, prepared: _Round) -> bool:
        """``_store`` in one transaction: on a SQLite file in one call on a thread,
        otherwise on the engine."""
        writes = self._sqlite_writes
        if writes is None:
            async with self.engine.begin() as conn:
                return await conn.run_sync(self._store, prepared)

        def store() -> bool:
            with writes.begin() as conn:
                return self._store(conn, prepared)

        return await asyncio.to_thread(store)

    @staticmethod
    def _store(conn: Connection, prepared: _Round) -> bool:
        """Write ``prepared`` if the state is still the one it was computed from; False if
        another sequencer moved it first (nothing is written)."""
        state = AuditSequencerState
        size, last_entry_id, checkpoint_size = prepared.read
        moved = conn.execute(
            update(state)
            .where(
                state.id == 1,
                state.tree_size == size,
                state.last_entry_id == last_entry_id,
                state.last_checkpoint_size == checkpoint_size,
            )
            .values(
                heartbeat=utcnow(),
                tree_size=prepared.size,
                last_entry_id=prepared.last_entry_id,
                last_checkpoint_size=prepared.size if prepared.checkpoint is not None else checkpoint_size,
            )
            .returning(state.id)
        )
        if moved.first() is None:
            return False
        if prepared.leaves:
            conn.execute(insert(AuditLeaf), prepared.leaves)
            conn.execute(insert(AuditNode), prepared.nodes)
        if prepared.checkpoint is not None:
            root, note = prepared.checkpoint
            conn.execute(
                insert(AuditCheckpoint).values(
                    tree_size=prepared.size, root_hash=root, note=note, created_at=utcnow()
                )
            )
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Round after round until ``stop`` is set; a failed round is logged and retried.

        After a settled round (nothing to add, no checkpoint owed), each poll first asks an
        ``IdleSignal`` whether anything may have changed, and runs no round while the answer
        is the one it gave before that settled round. An idle round through the ORM cost
        about 1.4 ms of CPU on SQLite and 0.5 ms on PostgreSQL, twenty times a second at
        the default 50 ms poll, in every process that runs a sequencer. A round runs as
        before whenever the signal cannot answer."""
        signal = await self._idle_signal()
        failures = FailureLog(logger, "audit sequencer")
        quiet: object | None = None
        try:
            while not stop.is_set():
                marker = await signal.mark() if signal is not None else None
                added = 0
                if marker is None or marker != quiet:
                    quiet = None
                    try:
                        added = await self.run_once()
                        failures.succeeded()
                        if self._settled:
                            quiet = marker
                    except OperationalError as exc:
                        # SQLite busy: another writer holds the lock; the next poll tries again.
                        if "locked" not in str(exc):
                            failures.failed("audit sequencer round failed", exc)
                    except Exception as exc:
                        failures.failed("audit sequencer round failed", exc)
                if added >= self.config.batch_size:
                    continue
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self.config.poll_interval)
                except TimeoutError:
                    pass
        finally:
            if signal is not None:
                await signal.close()

    async def _idle_signal(self) -> IdleSignal | None:
        """The commit marker on a SQLite file, a one-statement probe on PostgreSQL, or None
        (a SQLite database in memory, or no connection for the probe: every poll then runs
        a round)."""
        if self.engine.dialect.name == "postgresql":
            try:
                return PendingWorkProbe(
                    await PostgresReads.open(
                        asyncpg_dsn(self.engine.url),
                        min_size=1,
                        max_size=1,
                        recycle_seconds=self.config.pool_recycle_seconds,
                    )
                )
            except (OSError, TimeoutError, asyncpg.PostgresError):
                logger.warning("audit sequencer: no connection for its idle probe; polling with rounds")
                return None
        if self._sqlite_path is None:
            return None
        # Opened on the loop's thread, which uses and closes it (sqlite3 checks that).
        return CommitMarker(SqliteReads.open(self._sqlite_path))


class IdleSignal(Protocol):
    """What tells a settled sequencer whether a round could find something."""

    async def mark(self) -> object | None:
        """A value equal to an earlier one only if no round could find anything new since
        that one was read; None when it cannot tell (a round then runs)."""
        ...

    async def close(self) -> None: ...


class CommitMarker:
    """SQLite: the commit marker (``SqliteReads.commit_marker``, ``PRAGMA data_version``),
    which every commit of any other connection in any process moves; a statement of a few
    microseconds on a kept connection, against an idle round's 1.4 ms."""

    def __init__(self, reads: SqliteReads) -> None:
        self.reads = reads

    async def mark(self) -> object | None:
        return self.reads.commit_marker()

    async def close(self) -> None:
        await self.reads.close()


# Whether a round could add leaves or owe a checkpoint: the two conditions ``_prepare``
# tests, read in one statement (one snapshot) on the raw driver.
_PENDING_WORK = (
    "SELECT s.tree_size, s.last_entry_id, s.last_checkpoint_size,"
    " EXISTS (SELECT 1 FROM audit_entries e WHERE e.id > s.last_entry_id)"
    " FROM audit_sequencer s WHERE s.id = 1"
)


class PendingWorkProbe:
    """PostgreSQL: one statement on a kept asyncpg connection, which asks what a round's
    reads would find: entries after the last one sequenced, or a tree larger than its
    last checkpoint. It marks the sequencer's state while neither holds, so the marker
    changes when an entry commits, a checkpoint is owed, or another process's sequencer
    moves the state. (No LISTEN/NOTIFY from the audit writers: a NOTIFY takes a lock at
    commit that would put every writer's commit in one line.) The statement costs the
    sequencer's process about 55 us of CPU against an idle ORM round's 500 (bench/README.md,
    "An idle sequencer")."""

    def __init__(self, reads: PostgresReads) -> None:
        self.reads = reads

    async def mark(self) -> object | None:
        try:
            rows = await self.reads.rows(_PENDING_WORK)
        except Exception:
            # The round that runs instead reports what is wrong with the database.
            return None
        if not rows:
            return None
        size, last_entry_id, checkpoint_size, pending = rows[0]
        if pending or size > checkpoint_size:
            return None
        return (size, last_entry_id, checkpoint_size)

    async def close(self) -> None:
        await self.reads.close()
