"""Server-side sessions and the CSRF tokens tied to them.

The cookie carries 32 random bytes; the database keeps only their SHA-256, so a copy of
the table (or a backup) cannot be replayed as a cookie. A session ends when it has been
idle too long, when it is older than the absolute limit, or at sign-out.

A form's CSRF token is an HMAC of the session token, so it is tied to the session, needs
no storage, and reveals nothing about the cookie. Before sign-in the same scheme runs on
a short-lived pre-session cookie, which stops a forged sign-in (login CSRF).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth.dependencies import Principal
from service.console.config import ConsoleSettings
from service.console.models import ConsoleSession
from service.db import utcnow

SESSION_COOKIE = "tellonce_console"
PRESESSION_COOKIE = "tellonce_console_pre"
CSRF_FIELD = "csrf_token"
_CSRF_LABEL = b"tellonce console csrf v1"
# Writing last_seen_at on every page view would turn reads into writes; a minute's
# slack on a fifteen-minute idle limit is not worth a write per request.
_TOUCH_EVERY = timedelta(seconds=60)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token_for(token: str) -> str:
    """The CSRF token of every form shown within the session (or pre-session) ``token``."""
    return hmac.new(token.encode(), _CSRF_LABEL, hashlib.sha256).hexdigest()


def csrf_matches(token: str | None, submitted: str | None) -> bool:
    """Constant-time check of a submitted CSRF token against the session's."""
    if not token or not submitted:
        return False
    # Compared as bytes: compare_digest refuses a str with non-ASCII characters (TypeError).
    return hmac.compare_digest(csrf_token_for(token).encode(), submitted.encode())


@dataclass(frozen=True)
class SignedIn:
    """The person behind a live console session, as the principal the services expect."""

    principal: Principal
    token: str
    created_at: datetime

    @property
    def csrf_token(self) -> str:
        return csrf_token_for(self.token)


def _expired_condition(settings: ConsoleSettings, now: datetime) -> object:
    return or_(
        ConsoleSession.last_seen_at < now - timedelta(seconds=settings.idle_timeout_seconds),
        ConsoleSession.created_at < now - timedelta(seconds=settings.absolute_timeout_seconds),
    )


async def start(session: AsyncSession, principal: Principal, settings: ConsoleSettings) -> str:
    """A new session for ``principal``; returns the cookie token (shown to nobody else)."""
    now = utcnow()
    # Sweep expired sessions here, where a write happens anyway.
    await session.execute(delete(ConsoleSession).where(_expired_condition(settings, now)))  # type: ignore[arg-type]
    token = new_token()
    session.add(
        ConsoleSession(
            token_hash=token_hash(token),
            client_id=principal.client_id,
            department=principal.department,
            roles=sorted(principal.roles),
            created_at=now,
            last_seen_at=now,
        )
    )
    await session.flush()
    return token


async def resume(session: AsyncSession, token: str | None, settings: ConsoleSettings) -> SignedIn | None:
    """The live session behind a cookie token, or ``None`` (unknown, idle or too old)."""
    if not token or len(token) > 128:
        return None
    row = (
        await session.execute(select(ConsoleSession).where(ConsoleSession.token_hash == token_hash(token)))
    ).scalar_one_or_none()
    if row is None:
        return None
    now = utcnow()
    idle = now - row.last_seen_at > timedelta(seconds=settings.idle_timeout_seconds)
    too_old = now - row.created_at > timedelta(seconds=settings.absolute_timeout_seconds)
    if idle or too_old:
        await session.delete(row)
        await session.flush()
        return None
    if now - row.last_seen_at > _TOUCH_EVERY:
        row.last_seen_at = now
        await session.flush()
    principal = Principal.with_roles(row.client_id, row.department, *row.roles)
    return SignedIn(principal=principal, token=token, created_at=row.created_at)


async def end(session: AsyncSession, token: str) -> None:
    await session.execute(delete(ConsoleSession).where(ConsoleSession.token_hash == token_hash(token)))


async def end_all_for(session: AsyncSession, client_id: str) -> None:
    """Sign a client out everywhere (its credentials were disabled)."""
    await session.execute(delete(ConsoleSession).where(ConsoleSession.client_id == client_id))
