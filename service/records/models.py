"""Citizens and ciphertext field values.

These are the ciphertext models: only ``records``, ``crypto`` and ``audit`` may import
them (``tests/test_access_path.py`` enforces it). A value row never holds plaintext;
``ciphertext`` is the AEAD output of ``service.crypto`` and ``blind_index`` a keyed hash.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Boolean, Date, ForeignKey, Index, Integer, LargeBinary, String, text
from sqlalchemy.orm import Mapped, mapped_column

from service.crypto.blind_index import NORMALISATION_VERSION
from service.db import Base, utcnow


class Citizen(Base):
    """A citizen, known to the service only by a pseudonymous id and a status in clear."""

    __tablename__ = "citizens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    # The record's version: every write increments it; it is the ETag.
    version: Mapped[int] = mapped_column(Integer, default=1)
    registered_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    erased_at: Mapped[datetime | None] = mapped_column(default=None)


class FieldValue(Base):
    """One version of one field of one citizen, encrypted under the owner's data key."""

    __tablename__ = "field_values"
    __table_args__ = (
        Index("uq_field_values_citizen_field_version", "citizen_id", "field", "version", unique=True),
        # At most one current value per (citizen, field): reads take only current rows.
        Index(
            "uq_field_values_current",
            "citizen_id",
            "field",
            unique=True,
            sqlite_where=text("is_current"),
            postgresql_where=text("is_current"),
        ),
        # Only searchable fields have a blind index, so only their rows are indexed; every
        # search compares blind_index, which implies the condition on both databases.
        Index(
            "ix_field_values_blind_index",
            "field",
            "blind_index",
            sqlite_where=text("blind_index IS NOT NULL"),
            postgresql_where=text("blind_index IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    citizen_id: Mapped[str] = mapped_column(ForeignKey("citizens.id"))
    field: Mapped[str] = mapped_column(String(63))
    version: Mapped[int] = mapped_column(Integer)
    owner: Mapped[str] = mapped_column(String(63))
    # The data key the value is encrypted under (service.crypto's data_keys.id).
    data_key_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    # Truncated HMAC of the normalised value, for searchable fields only.
    blind_index: Mapped[bytes | None] = mapped_column(LargeBinary(16), default=None)
    # The normalisation the blind index was computed with (service.crypto.blind_index).
    # Rows from before version 2 read 1; `tellonce records reindex` rebuilds every row
    # below the current version.
    blind_index_version: Mapped[int] = mapped_column(
        Integer, default=NORMALISATION_VERSION, server_default=text("1")
    )
    is_current: Mapped[bool] = mapped_column(Boolean, default=True)
    written_by: Mapped[str] = mapped_column(String(200))
    written_at: Mapped[datetime] = mapped_column(default=utcnow)


class VerifyProbe(Base):
    """How many open comparisons a consumer asked of one citizen's field on one UTC day.

    Shared by every process through the database, so the daily limit on claims an
    agreement leaves open holds across replicas. Rows of past days are pruned."""

    __tablename__ = "verify_probes"

    consumer: Mapped[str] = mapped_column(String(63), primary_key=True)
    citizen_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    field: Mapped[str] = mapped_column(String(63), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    comparisons: Mapped[int] = mapped_column(Integer)


class ImportRun(Base):
    """How far ``tellonce import`` has committed one file, for ``--resume``.

    A file is known by its department, mode and SHA-256; each batch of rows updates
    ``last_line`` and the counts in the batch's own transaction, so after a crash they
    describe exactly what is stored. No row value is kept here."""

    __tablename__ = "import_runs"
    __table_args__ = (Index("uq_import_runs_file", "department", "mode", "file_sha256", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    department: Mapped[str] = mapped_column(String(63))
    mode: Mapped[str] = mapped_column(String(16))
    file_sha256: Mapped[str] = mapped_column(String(64))
    # The last line of the file whose row is committed (0: none yet).
    last_line: Mapped[int] = mapped_column(Integer, default=0)
    rows_read: Mapped[int] = mapped_column(Integer, default=0)
    registered: Mapped[int] = mapped_column(Integer, default=0)
    updated: Mapped[int] = mapped_column(Integer, default=0)
    unchanged: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
