"""OAuth2 clients: department systems that call the API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, utcnow


class Client(Base):
    """A registered client. Only a hash of its secret is kept; a ``private_key_jwt``
    client has a public JWK instead and no secret at all."""

    __tablename__ = "clients"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    department: Mapped[str] = mapped_column(String(63))
    roles: Mapped[list[str]] = mapped_column(JSON)
    public_jwk: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # Hex SHA-256 of the secret (see service.auth.secrets for why a fast hash suffices).
    secret_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(default=None)
    # Per-client token bucket; NULL means the Settings default.
    rate_per_second: Mapped[float | None] = mapped_column(Float, default=None)
    rate_burst: Mapped[int | None] = mapped_column(Integer, default=None)
