"""Server-side console sessions. The cookie holds a random token; the table holds its hash."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, utcnow


class ConsoleSession(Base):
    """One signed-in person. A table rather than process memory, so every replica sees it."""

    __tablename__ = "console_sessions"
    __table_args__ = (Index("ix_console_sessions_last_seen_at", "last_seen_at"),)

    # SHA-256 of the cookie token: a copy of this table signs nobody in.
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64))
    department: Mapped[str] = mapped_column(String(63))
    roles: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
