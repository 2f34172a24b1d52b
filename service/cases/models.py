"""A consumer's case: a reference its accesses under delayed-disclosure agreements carry."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base


class Case(Base):
    """Opened by the first access under a delayed-disclosure agreement that names it,
    closed by the consumer department; a reference is its department's own."""

    __tablename__ = "cases"

    department: Mapped[str] = mapped_column(String(63), primary_key=True)
    case_ref: Mapped[str] = mapped_column(String(100), primary_key=True)
    opened_at: Mapped[datetime] = mapped_column()
    closed_at: Mapped[datetime | None] = mapped_column(default=None)
    closed_by: Mapped[str | None] = mapped_column(String(200), default=None)
