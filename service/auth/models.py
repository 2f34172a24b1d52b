"""OAuth2 clients: department systems that call the API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, Index, Integer, String
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


class UsedAssertion(Base):
    """A ``private_key_jwt`` assertion id, kept until the assertion expires, so a captured
    assertion is refused on every replica and after a restart."""

    __tablename__ = "used_assertions"
    __table_args__ = (Index("ix_used_assertions_expires_at", "expires_at"),)

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    jti: Mapped[str] = mapped_column(String(255), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column()


class RateBucket(Base):
    """A client's token bucket, shared by every replica (``auth/ratelimit.py``,
    ``SharedRateLimiter``). UNLOGGED on PostgreSQL: its writes skip the WAL, so a claim
    commits without waiting for a disk flush; a crash empties it, which only refills every
    bucket. Created on SQLite too, like every model, where nothing writes it."""

    __tablename__ = "rate_buckets"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    # Seconds since 1970 on the database's clock, as of the last claim.
    refilled_at: Mapped[float] = mapped_column(Float)
    # What the last claim took (its statement returns it).
    granted: Mapped[int] = mapped_column(Integer)


class AuthFailure(Base):
    """Failed client authentications in one window, per subject: ``client-address:<id> <ip>``,
    ``address:<ip>``, or ``client:<id>`` when a ceiling per client is set
    (``auth/throttle.py``); shared by every replica."""

    __tablename__ = "auth_failures"

    subject: Mapped[str] = mapped_column(String(200), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
