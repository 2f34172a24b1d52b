"""Consent artefacts and objections: a citizen's choices over non-statutory agreements.

Neither table holds a field value. A consent's terms (agreement, consumer, purpose,
fields, actions, expiry, data life) never change once made; only its status does, and every change
is audited. An objection exists while it stands; withdrawing it deletes the row (the
audit keeps its history).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, utcnow


class Consent(Base):
    """One citizen's consent to one consent-based agreement, signed by the service."""

    __tablename__ = "consents"
    __table_args__ = (
        # The access path's question: this citizen's active consents among some agreements.
        Index("ix_consents_citizen_agreement", "citizen_id", "agreement"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    citizen_id: Mapped[str] = mapped_column(ForeignKey("citizens.id"))
    agreement: Mapped[str] = mapped_column(String(63))
    consumer: Mapped[str] = mapped_column(String(63))
    purpose: Mapped[str] = mapped_column(String(63))
    fields: Mapped[list[str]] = mapped_column(JSON)
    # The agreement's actions when the citizen consented: the consent covers only these,
    # and none when NULL or empty (default deny). Migration 0020 filled in the consents
    # given before, from the agreement version in force when each was given.
    actions: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    # active | paused | revoked; ``expired`` is derived from ``expires_at`` when read.
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    # How long the consumer may keep what it read under this consent (ISO 8601 duration).
    data_life: Mapped[str | None] = mapped_column(String(32), default=None)
    # The artefact's terms as a compact JWS, signed with the service's token key.
    signature: Mapped[str] = mapped_column(Text)


class Objection(Base):
    """A citizen's standing objection to one objectable agreement."""

    __tablename__ = "objections"

    citizen_id: Mapped[str] = mapped_column(ForeignKey("citizens.id"), primary_key=True)
    agreement: Mapped[str] = mapped_column(String(63), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
