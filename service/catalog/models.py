from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, utcnow


class CatalogVersion(Base):
    """An immutable catalog version; the highest number is the one in force."""

    __tablename__ = "catalog_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    content: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Not unique: a catalog may come back (a signing key added, then removed) as a new version.
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    author: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
