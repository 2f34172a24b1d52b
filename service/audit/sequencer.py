"""The sequencer: leaf indices in commit order, the Merkle tree, signed checkpoints.

Each round is one transaction that starts by updating the single ``audit_sequencer``
row. That write locks the row (PostgreSQL) or the database (SQLite) before anything is
read, so however many processes run a sequencer, rounds happen one at a time and each
sees the state the previous one left. Entries are taken in id order after the last one
sequenced; the writers' append lock makes id order the commit order, so no entry that
commits later can have an id below one already sequenced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.audit import merkle
from service.audit import repository as audit_repository
from service.audit.checkpoint import Checkpoint, NoteSigner
from service.audit.models import AuditCheckpoint, AuditEntryRow, AuditLeaf, AuditNode, AuditSequencerState
from service.db import utcnow

logger = logging.getLogger("tellonce.audit.sequencer")


@dataclass
class SequencerConfig:
    origin: str
    checkpoint_every: int = 1000
    checkpoint_interval: float = 1.0
    batch_size: int = 5000
    poll_interval: float = 0.05


class Sequencer:
    def __init__(self, engine: AsyncEngine, signer: NoteSigner, config: SequencerConfig) -> None:
        self.engine = engine
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

    async def _load_range(self, conn: AsyncConnection, size: int) -> merkle.CompactRange:
        keys = merkle.CompactRange.keys_for(size)
        nodes = await audit_repository.read_nodes(conn, keys)
        return merkle.CompactRange(size, [nodes[key] for key in keys])

    async def run_once(self) -> int:
        """Sequence what has committed since the last round; return how many leaves were added."""
        if not await self._has_work():
            return 0
        self._signed_this_round = False
        try:
            async with self.engine.begin() as conn:
                added = await self._round(conn)
        except Exception:
            # The in-memory edge may be ahead of what committed: reload it next round.
            self._range = None
            raise
        if self._signed_this_round:
            self.checkpoint_signed.set()
        return added

    async def _has_work(self) -> bool:
        """A read-only look first, so an idle sequencer never takes the write lock."""
        async with self.engine.connect() as conn:
            state = (
                await conn.execute(
                    select(
                        AuditSequencerState.tree_size,
                        AuditSequencerState.last_entry_id,
                        AuditSequencerState.last_checkpoint_size,
                    ).where(AuditSequencerState.id == 1)
                )
            ).one()
            newest = (await conn.execute(select(func.max(AuditEntryRow.id)))).scalar()
            await conn.rollback()
        size, last_entry_id, checkpoint_size = state
        if newest is not None and newest > last_entry_id:
            return True
        return size > checkpoint_size and (
            time.monotonic() - self._last_checkpoint_at >= self.config.checkpoint_interval
        )

    async def _round(self, conn: AsyncConnection) -> int:
        state = AuditSequencerState
        size, last_entry_id, checkpoint_size = (
            await conn.execute(
                update(state)
                .where(state.id == 1)
                .values(heartbeat=utcnow())
                .returning(state.tree_size, state.last_entry_id, state.last_checkpoint_size)
            )
        ).one()
        if self._range is None or self._range.size != size:
            self._range = await self._load_range(conn, size)
        compact = self._range
        rows = (
            await conn.execute(
                select(AuditEntryRow.id, AuditEntryRow.canonical)
                .where(AuditEntryRow.id > last_entry_id)
                .order_by(AuditEntryRow.id)
                .limit(self.config.batch_size)
            )
        ).all()
        leaves: list[dict[str, int]] = []
        nodes: list[dict[str, object]] = []
        for entry_id, canonical in rows:
            leaf_index = compact.size
            leaves.append({"leaf_index": leaf_index, "entry_id": entry_id})
            for level, index, digest in compact.append(merkle.leaf_hash(canonical.encode())):
                nodes.append({"level": level, "index": index, "hash": digest})
        if rows:
            await conn.execute(insert(AuditLeaf), leaves)
            await conn.execute(insert(AuditNode), nodes)
            last_entry_id = rows[-1][0]
        new_size = compact.size
        now = time.monotonic()
        due = new_size > checkpoint_size and (
            new_size - checkpoint_size >= self.config.checkpoint_every
            or now - self._last_checkpoint_at >= self.config.checkpoint_interval
        )
        if due:
            root = compact.root()
            note = self.signer.sign(Checkpoint(self.config.origin, new_size, root).body())
            await conn.execute(
                insert(AuditCheckpoint).values(
                    tree_size=new_size, root_hash=root, note=note, created_at=utcnow()
                )
            )
            checkpoint_size = new_size
            self._last_checkpoint_at = now
            self._signed_this_round = True
        await conn.execute(
            update(state)
            .where(state.id == 1)
            .values(tree_size=new_size, last_entry_id=last_entry_id, last_checkpoint_size=checkpoint_size)
        )
        return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        """Round after round until ``stop`` is set; a failed round is logged and retried."""
        while not stop.is_set():
            added = 0
            try:
                added = await self.run_once()
            except OperationalError as exc:
                # SQLite busy: another writer holds the lock; the next poll tries again.
                if "locked" not in str(exc):
                    logger.exception("audit sequencer round failed")
            except Exception:
                logger.exception("audit sequencer round failed")
            if added >= self.config.batch_size:
                continue
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.config.poll_interval)
            except TimeoutError:
                pass
