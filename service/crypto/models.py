"""Key tables: department KEKs (wrapped by the root key), data keys (wrapped by a KEK), and
the bookkeeping of a re-encryption that must survive an interruption.

Only wrapped bytes are stored. A destroyed key has its wrapped bytes set to NULL.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, LargeBinary, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, utcnow

# KEK statuses: active (wraps new data keys; exactly one per department), decrypt_only
# (still unwraps data keys not yet rewrapped), retired (unused, wrapped bytes destroyed).
# Data-key statuses: active (the citizen's key for that department), replaced (a
# re-encryption is moving its values), destroyed (replaced, then wiped), shredded (erased).

_ID = BigInteger().with_variant(Integer, "sqlite")


class KeyEncryptionKey(Base):
    """One version of a department's key-encryption key."""

    __tablename__ = "key_encryption_keys"
    __table_args__ = (
        UniqueConstraint("department", "version"),
        # Exactly one active version per department, enforced by the database.
        Index(
            "uq_key_encryption_keys_active",
            "department",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    department: Mapped[str] = mapped_column(String(63))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="active")
    provider: Mapped[str] = mapped_column(String(63))
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(default=None)


class DataKeyRecord(Base):
    """A data key for one (citizen, owning department), wrapped by a KEK version."""

    __tablename__ = "data_keys"
    __table_args__ = (
        Index(
            "uq_data_keys_active",
            "citizen_id",
            "department",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
        # Rotation walks a department's keys still on older KEK versions.
        Index("ix_data_keys_department_kek_version", "department", "kek_version"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    citizen_id: Mapped[str] = mapped_column(ForeignKey("citizens.id"), index=True)
    department: Mapped[str] = mapped_column(String(63))
    kek_version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="active")
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    destroyed_at: Mapped[datetime | None] = mapped_column(default=None)


class KeyJob(Base):
    """A department-wide re-encryption in progress, so an interrupted run resumes.

    ``cutoff_data_key_id`` is the highest data-key id when the job began: keys at or below
    it are suspect and replaced; keys made later are already new.
    """

    __tablename__ = "key_jobs"
    __table_args__ = (
        Index(
            "uq_key_jobs_unfinished",
            "department",
            "kind",
            unique=True,
            sqlite_where=text("finished_at IS NULL"),
            postgresql_where=text("finished_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    department: Mapped[str] = mapped_column(String(63))
    kind: Mapped[str] = mapped_column(String(16))
    cutoff_data_key_id: Mapped[int] = mapped_column(_ID)
    processed: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
