"""Audit tables: entries (append-only by trigger), leaves, tree nodes, checkpoints.

``audit_entries`` keeps each entry's canonical JSON, which is what its leaf hashes,
beside copies of the columns auditors filter on. Owners and fields are kept as
comma-wrapped lists (``,dvla,welfare,``) so one ``LIKE '%,dvla,%'`` filters them on
both databases without a join table on the hot insert path.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, utcnow

BigId = BigInteger().with_variant(Integer(), "sqlite")


class AuditEntryRow(Base):
    __tablename__ = "audit_entries"
    __table_args__ = (
        Index("ix_audit_entries_citizen_id", "citizen_id", "id"),
        Index("ix_audit_entries_time", "time"),
        Index("ix_audit_entries_department", "department", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column()
    client_id: Mapped[str] = mapped_column(String(200))
    department: Mapped[str] = mapped_column(String(63))
    citizen_id: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    decision: Mapped[str] = mapped_column(String(16))
    purpose: Mapped[str | None] = mapped_column(String(63))
    owners: Mapped[str] = mapped_column(Text)
    fields: Mapped[str] = mapped_column(Text)
    canonical: Mapped[str] = mapped_column(Text)


class AuditLeaf(Base):
    """Leaf index -> entry, filled by the sequencer in commit order."""

    __tablename__ = "audit_leaves"

    leaf_index: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    entry_id: Mapped[int] = mapped_column(BigId, unique=True)


class AuditNode(Base):
    """Every complete subtree's hash, so a proof costs O(log n) reads."""

    __tablename__ = "audit_nodes"

    level: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    index: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditCheckpoint(Base):
    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tree_size: Mapped[int] = mapped_column(BigId, index=True)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    note: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditSequencerState(Base):
    """One row. The sequencer locks it (UPDATE first) for each round: one at a time."""

    __tablename__ = "audit_sequencer"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    tree_size: Mapped[int] = mapped_column(BigId)
    last_entry_id: Mapped[int] = mapped_column(BigId)
    last_checkpoint_size: Mapped[int] = mapped_column(BigId)
    heartbeat: Mapped[datetime] = mapped_column(default=utcnow)


class AuditCosignature(Base):
    """A witness's cosignature (tlog-cosignature/v1) on a checkpoint: one signature line.

    Not append-only: a witness re-cosigns the newest checkpoint while the log is idle,
    and the fresher line replaces the older. Anyone holding the witness's key checks it.
    """

    __tablename__ = "audit_cosignatures"

    checkpoint_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("audit_checkpoints.id"), primary_key=True, autoincrement=False
    )
    witness: Mapped[str] = mapped_column(String(255), primary_key=True)
    line: Mapped[str] = mapped_column(Text)
    # The cosignature's own timestamp (the witness's clock).
    cosigned_at: Mapped[datetime] = mapped_column()


class AuditWitnessedCheckpoint(Base):
    """A checkpoint that reached the witness quorum, and when it last did (our clock)."""

    __tablename__ = "audit_witnessed"

    checkpoint_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("audit_checkpoints.id"), primary_key=True, autoincrement=False
    )
    tree_size: Mapped[int] = mapped_column(BigId, index=True)
    witnessed_at: Mapped[datetime] = mapped_column()


class AuditorObservedCheckpoint(Base):
    """The largest checkpoint an auditor has verified, kept apart from the audit tables.

    "Verify now" refuses a log that no longer reaches it: a truncated or emptied log
    cannot pass by also dropping its own checkpoints.
    """

    __tablename__ = "auditor_observed_checkpoints"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tree_size: Mapped[int] = mapped_column(BigId, index=True)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    note: Mapped[str] = mapped_column(Text)
    observed_by: Mapped[str] = mapped_column(String(200))
    observed_at: Mapped[datetime] = mapped_column(default=utcnow)
