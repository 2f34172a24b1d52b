from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, utcnow


class AgreementVersion(Base):
    """One immutable version of an agreement; ``is_current`` marks the one in force."""

    __tablename__ = "agreement_versions"
    __table_args__ = (
        UniqueConstraint("agreement_id", "version"),
        # At most one current version per agreement, and a cheap way to load them all.
        Index(
            "uq_agreement_versions_current",
            "agreement_id",
            unique=True,
            sqlite_where=text("is_current"),
            postgresql_where=text("is_current"),
        ),
        Index("ix_agreement_versions_owner", "owner"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    agreement_id: Mapped[str] = mapped_column(String(63))
    owner: Mapped[str] = mapped_column(String(63))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    content: Mapped[dict[str, Any]] = mapped_column(JSON)
    content_hash: Mapped[str] = mapped_column(String(64))
    author: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text, default="")
    is_current: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PolicyEpoch(Base):
    """One row: bumped by every policy change, so every process knows to recompile.

    ``token`` changes with every bump too, so an epoch number reused by a rolled-back
    transaction can never be mistaken for the one a process compiled.
    """

    __tablename__ = "policy_epoch"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    epoch: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    token: Mapped[str] = mapped_column(String(32))
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)
