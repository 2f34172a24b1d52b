"""Failed client authentications, throttled per client id at one source address and per
source address.

Used by ``POST /oauth/token`` and the console's sign-in. Failures are counted in the
database in fixed windows (table ``auth_failures``), so every replica sees the same
counts. A subject's count is its failures in the current window and the previous one
together, so a burst that straddles a window boundary is counted whole instead of
starting again from zero. Once a subject has reached its limit, further attempts are
refused with 429 and ``Retry-After`` (until enough of its failures have aged out of the two
windows) without checking the credentials at all; crossing the limit is logged once.

The subjects:

- a client id at one address (``client-address:<id> <address>``): wrong secrets or bad
  assertions for a client refuse that client from that address only. A client id is not a
  secret, so counting it alone would let anyone who learnt it lock the department's system
  out of its tokens from anywhere;
- an address (``address:<address>``), across every client id it names: one address
  guessing at many clients;
- a client id at every address (``client:<id>``), only when
  ``TELLONCE_AUTH_FAILURES_PER_CLIENT`` is set. Unset by default: a secret is 256 random
  bits and an assertion needs the client's private key, so no number of addresses can guess
  one, while any such ceiling gives back the lockout to whoever has that many addresses.

The address is the one the audit records (``facts.source_address``): the connection's
peer, or the ``X-Forwarded-For`` address when that peer is a proxy uvicorn trusts
(``FORWARDED_ALLOW_IPS``). An IPv6 address is counted by its /64, the block one host or site
is given and could step through address by address past any per-address limit; an IPv4
address mapped into IPv6 is counted as that IPv4 address. Requests without one count, per
client id, as from one unknown address.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from fastapi import Request
from sqlalchemy import Table, delete, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth.facts import source_address
from service.auth.models import AuthFailure
from service.auth.secrets import loggable_client_id
from service.auth.server import plausible_client_id
from service.config import Settings
from service.db import utcnow
from service.errors import TooManyRequests
from service.observability import Metrics

logger = logging.getLogger("tellonce.auth.throttle")
failures_table: Table = AuthFailure.__table__  # type: ignore[assignment]
# Where a request without a source address is counted from (the ASGI server gave none).
UNKNOWN_ADDRESS = "unknown"


@dataclass(frozen=True)
class Subjects:
    """Who failed: the client id claimed (if any) and the source address (if known)."""

    client_id: str | None
    address: str | None

    def limits(self, settings: Settings) -> list[tuple[str, int]]:
        keyed: list[tuple[str, int]] = []
        address = counted_address(self.address)
        # An id no client can have is not counted (the address still is); a NUL in it
        # could not even reach PostgreSQL as text. A loggable id holds no space, so the
        # space before the address (which may hold anything a trusted proxy forwarded)
        # keeps every pair apart.
        if self.client_id and plausible_client_id(self.client_id):
            client = loggable_client_id(self.client_id)
            pair = f"client-address:{client} {address or UNKNOWN_ADDRESS}"
            keyed.append((pair, settings.auth_failures_per_client_address))
            if settings.auth_failures_per_client is not None:
                keyed.append((f"client:{client}", settings.auth_failures_per_client))
        if address:
            keyed.append((f"address:{address}", settings.auth_failures_per_address))
        return keyed


def counted_address(address: str | None) -> str | None:
    """Where a failure from ``address`` is counted: an IPv6 address by its /64, an IPv4
    address mapped into IPv6 as that IPv4 address, anything else as it is (at most 64
    characters: a trusted proxy may forward any text)."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip), 64), strict=False))
    return str(ip)


def _window(now: datetime, seconds: int) -> datetime:
    start = int(now.timestamp()) // seconds * seconds
    return datetime.fromtimestamp(start, tz=now.tzinfo)


async def _counts(
    session: AsyncSession, subjects: list[str], window: datetime, seconds: int
) -> dict[str, tuple[int, int]]:
    """Each subject's failures as (previous window, current window)."""
    previous = window - timedelta(seconds=seconds)
    is_current = (failures_table.c.window_start == window).label("is_current")
    rows = await session.execute(
        select(failures_table.c.subject, is_current, failures_table.c.failures).where(
            failures_table.c.subject.in_(subjects), failures_table.c.window_start.in_([previous, window])
        )
    )
    counts = dict.fromkeys(subjects, (0, 0))
    for subject, current, failures in rows:
        before, now = counts[subject]
        counts[subject] = (before, now + failures) if current else (before + failures, now)
    return counts


def _context(request: Request, client_id: str | None) -> tuple[Settings, Subjects, Metrics | None]:
    settings: Settings = request.app.state.settings
    subjects = Subjects(client_id, source_address(request))
    return settings, subjects, getattr(request.app.state, "metrics", None)


async def refuse_if_throttled(
    session: AsyncSession, request: Request, client_id: str | None, *, endpoint: str
) -> None:
    """Raise ``TooManyRequests`` when the client id at this address, the address, or (with a
    ceiling set) the client id is over its limit."""
    settings, subjects, metrics = _context(request, client_id)
    now = utcnow()
    window = _window(now, settings.auth_failure_window_seconds)
    limits = dict(subjects.limits(settings))
    if not limits:
        return
    seconds = settings.auth_failure_window_seconds
    counts = await _counts(session, list(limits), window, seconds)
    over = [
        (previous, current, limits[subject])
        for subject, (previous, current) in counts.items()
        if previous + current >= limits[subject]
    ]
    if over:
        if metrics is not None:
            metrics.auth_throttled.labels(endpoint).inc()
        # The previous window's failures age out when this window ends; this window's own
        # failures only when the next one ends.
        windows_left = 2 if any(current >= limit for _, current, limit in over) else 1
        retry = window + timedelta(seconds=seconds * windows_left) - now
        raise TooManyRequests(
            int(retry.total_seconds()) + 1,
            "Too many failed sign-in attempts for this client or from this address; try again later.",
        )


async def record_failure(
    session: AsyncSession, request: Request, client_id: str | None, *, endpoint: str
) -> None:
    """Count one failed authentication against each of its subjects."""
    settings, subjects, metrics = _context(request, client_id)
    now = utcnow()
    seconds = settings.auth_failure_window_seconds
    window = _window(now, seconds)
    dialect = session.get_bind().dialect.name
    upsert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    if metrics is not None:
        metrics.auth_failures.labels(endpoint).inc()
    limits = subjects.limits(settings)
    counts = await _counts(session, [subject for subject, _ in limits], window, seconds)
    for subject, limit in limits:
        statement = upsert(failures_table).values(subject=subject, window_start=window, failures=1)
        counted = statement.on_conflict_do_update(
            index_elements=[failures_table.c.subject, failures_table.c.window_start],
            set_={"failures": failures_table.c.failures + 1},
        ).returning(failures_table.c.failures)
        current = int((await session.execute(counted)).scalar_one())
        if current == 1:
            # Only the previous window still counts; anything older is dropped.
            older = window - timedelta(seconds=seconds)
            await session.execute(delete(failures_table).where(failures_table.c.window_start < older))
        failures = counts[subject][0] + current
        if failures == limit:
            # Logged once, when the subject reaches its limit; the secret is never logged.
            logger.warning(
                "repeated authentication failures: throttling",
                extra={"endpoint": endpoint, "subject": subject, "failures": failures},
            )
