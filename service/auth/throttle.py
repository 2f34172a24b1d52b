"""Failed client authentications, throttled per client id and per source address.

Used by ``POST /oauth/token`` and the console's sign-in. Failures are counted in the
database in fixed windows (table ``auth_failures``), so every replica sees the same
counts. Once a client id or an address has failed ``limit`` times in the current window,
further attempts are refused with 429 and ``Retry-After`` (the rest of the window)
without checking the credentials at all; crossing the limit is logged once per window.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from fastapi import Request
from sqlalchemy import Table, delete, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth.models import AuthFailure
from service.config import Settings
from service.db import utcnow
from service.errors import TooManyRequests
from service.observability import Metrics

logger = logging.getLogger("tellonce.auth.throttle")
failures_table: Table = AuthFailure.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class Subjects:
    """Who failed: the client id claimed (if any) and the source address (if known)."""

    client_id: str | None
    address: str | None

    def limits(self, settings: Settings) -> list[tuple[str, int]]:
        keyed: list[tuple[str, int]] = []
        if self.client_id:
            keyed.append((f"client:{self.client_id[:64]}", settings.auth_failures_per_client))
        if self.address:
            keyed.append((f"address:{self.address[:64]}", settings.auth_failures_per_address))
        return keyed


def _window(now: datetime, seconds: int) -> datetime:
    start = int(now.timestamp()) // seconds * seconds
    return datetime.fromtimestamp(start, tz=now.tzinfo)


def _context(request: Request, client_id: str | None) -> tuple[Settings, Subjects, Metrics | None]:
    settings: Settings = request.app.state.settings
    subjects = Subjects(client_id, request.client.host if request.client else None)
    return settings, subjects, getattr(request.app.state, "metrics", None)


async def refuse_if_throttled(
    session: AsyncSession, request: Request, client_id: str | None, *, endpoint: str
) -> None:
    """Raise ``TooManyRequests`` when the client id or the address is over its limit."""
    settings, subjects, metrics = _context(request, client_id)
    now = utcnow()
    window = _window(now, settings.auth_failure_window_seconds)
    limits = dict(subjects.limits(settings))
    if not limits:
        return
    rows = await session.execute(
        select(failures_table.c.subject, failures_table.c.failures).where(
            failures_table.c.subject.in_(list(limits)), failures_table.c.window_start == window
        )
    )
    if any(count >= limits[subject] for subject, count in rows):
        if metrics is not None:
            metrics.auth_throttled.labels(endpoint).inc()
        retry = window + timedelta(seconds=settings.auth_failure_window_seconds) - now
        raise TooManyRequests(
            int(retry.total_seconds()) + 1,
            "Too many failed sign-in attempts for this client or from this address; try again later.",
        )


async def record_failure(
    session: AsyncSession, request: Request, client_id: str | None, *, endpoint: str
) -> None:
    """Count one failed authentication against the client id and the address."""
    settings, subjects, metrics = _context(request, client_id)
    now = utcnow()
    window = _window(now, settings.auth_failure_window_seconds)
    dialect = session.get_bind().dialect.name
    upsert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    if metrics is not None:
        metrics.auth_failures.labels(endpoint).inc()
    for subject, limit in subjects.limits(settings):
        statement = upsert(failures_table).values(subject=subject, window_start=window, failures=1)
        counted = statement.on_conflict_do_update(
            index_elements=[failures_table.c.subject, failures_table.c.window_start],
            set_={"failures": failures_table.c.failures + 1},
        ).returning(failures_table.c.failures)
        failures = int((await session.execute(counted)).scalar_one())
        if failures == 1:
            await session.execute(delete(failures_table).where(failures_table.c.window_start < window))
        if failures == limit:
            # Logged once per subject and window; the secret is never logged.
            logger.warning(
                "repeated authentication failures: throttling",
                extra={"endpoint": endpoint, "subject": subject, "failures": failures},
            )
