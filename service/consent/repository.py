"""Every query on consents and objections, as Core statements on a connection.

``choices`` is the access path's question (also asked on the raw drivers in
``service.records.store``); the rest serve the consent API and the console.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Table, and_, delete, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from service.consent.models import Consent, Objection
from service.policy.engine import RequestContext, consented

consents: Table = Consent.__table__  # type: ignore[assignment]
objections: Table = Objection.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class ChoiceRow:
    """An active consent (``consent`` true, with its expiry and the consumer, purpose,
    fields and actions of its signed terms) or an objection of a citizen."""

    citizen_id: str
    consent: bool
    agreement: str
    expires_at: datetime | None
    consumer: str = ""
    purpose: str = ""
    fields: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConsentRow:
    id: str
    citizen_id: str
    agreement: str
    consumer: str
    purpose: str
    fields: list[str]
    # None for a consent stored without actions: it covers none.
    actions: list[str] | None
    status: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    data_life: str | None
    signature: str


@dataclass(frozen=True)
class ObjectionRow:
    citizen_id: str
    agreement: str
    created_at: datetime


_CONSENT_COLUMNS = (
    consents.c.id,
    consents.c.citizen_id,
    consents.c.agreement,
    consents.c.consumer,
    consents.c.purpose,
    consents.c.fields,
    consents.c.actions,
    consents.c.status,
    consents.c.created_at,
    consents.c.updated_at,
    consents.c.expires_at,
    consents.c.data_life,
    consents.c.signature,
)


def raw_choices_query(where: str, *, postgres: bool = False) -> str:
    """The access path's question for a raw driver (``service.records.store``), with
    ``where`` the driver's condition on ``citizen_id`` and ``agreement``: rows of
    ('c', citizen, agreement, NULL, expires_at, consumer, purpose, fields, actions) per
    active consent (``fields`` and ``actions`` its terms' JSON lists) and ('o', citizen,
    agreement, NULL, NULL, NULL, NULL, NULL, NULL) per objection. The fourth column is there
    so that a citizens query ``(kind, id, status, version, NULL, ...)`` can be joined to it with
    UNION ALL, one round trip (``CHOICE_PADDING``). Paused, revoked and expired consents
    release nothing; expiry is judged against the request's own time by
    ``context_with_choices``."""
    number, instant = ("NULL::int", "NULL::timestamptz") if postgres else ("NULL", "NULL")
    return (
        f"SELECT 'c', citizen_id, agreement, {number}, expires_at, consumer, purpose, fields, actions "  # noqa: S608 (model names)
        f"FROM {consents.name} WHERE status = 'active' AND {where} "
        f"UNION ALL SELECT 'o', citizen_id, agreement, {number}, {instant}, {CHOICE_PADDING[postgres]} "
        f"FROM {objections.name} WHERE {where}"
    )


# The last four columns of a ``raw_choices_query`` row that is not a consent's.
CHOICE_PADDING = {False: "NULL, NULL, NULL, NULL", True: "NULL::text, NULL::text, NULL::json, NULL::json"}


def choice_row(r: Sequence[Any], expires_at: datetime | None) -> ChoiceRow:
    """A row of ``raw_choices_query``, its expiry already read by the driver's caller."""
    if r[0] != "c":
        return ChoiceRow(r[1], False, r[2], None)
    return ChoiceRow(r[1], True, r[2], expires_at, r[5], r[6], _names(r[7]), _names(r[8]))


def _names(listed: Any) -> tuple[str, ...]:
    """A JSON list of names as a driver returns it (text from sqlite3 and asyncpg alike, a
    list from SQLAlchemy's JSON type); none for NULL."""
    names = json.loads(listed) if isinstance(listed, str) else listed
    return tuple(names or ())


async def choices(
    conn: AsyncConnection, citizen_ids: Sequence[str], agreements: Sequence[str]
) -> list[ChoiceRow]:
    """The active consents and the objections of ``citizen_ids`` to ``agreements``."""
    if not citizen_ids or not agreements:
        return []
    active = await conn.execute(
        select(
            consents.c.citizen_id,
            consents.c.agreement,
            consents.c.expires_at,
            consents.c.consumer,
            consents.c.purpose,
            consents.c.fields,
            consents.c.actions,
        ).where(
            consents.c.citizen_id.in_(citizen_ids),
            consents.c.agreement.in_(agreements),
            consents.c.status == "active",
        )
    )
    objected = await conn.execute(
        select(objections.c.citizen_id, objections.c.agreement).where(
            objections.c.citizen_id.in_(citizen_ids), objections.c.agreement.in_(agreements)
        )
    )
    return [
        ChoiceRow(row[0], True, row[1], row[2], row[3], row[4], _names(row[5]), _names(row[6]))
        for row in active
    ] + [ChoiceRow(row[0], False, row[1], None) for row in objected]


def context_with_choices(
    context: RequestContext, citizen_id: str, rows: Iterable[ChoiceRow]
) -> RequestContext:
    """``context`` with the fields and actions the citizen's consents that are active and
    unexpired at the context's time cover (by their terms), and its objections, among
    ``rows``."""
    consents = frozenset(
        held
        for row in rows
        if row.citizen_id == citizen_id
        and row.consent
        and (row.expires_at is None or row.expires_at > context.time)
        for held in consented(row.agreement, row.consumer, row.purpose, row.fields, row.actions)
    )
    objections = frozenset(row.agreement for row in rows if row.citizen_id == citizen_id and not row.consent)
    return replace(context, consents=consents, objections=objections)


async def insert_consent(conn: AsyncConnection, row: ConsentRow) -> None:
    await conn.execute(insert(consents).values(**row.__dict__))


async def withdraw_insert(conn: AsyncConnection, consent_id: str) -> None:
    """Delete the consent this transaction just inserted (a grant that found, after its
    insert, another open consent to the same agreement), so nothing of it is kept whatever
    the caller then commits."""
    await conn.execute(delete(consents).where(consents.c.id == consent_id))


async def hold_consents_of(conn: AsyncConnection, citizen_id: str, agreement: str) -> None:
    """Until the transaction ends, make every other transaction that calls this for the same
    citizen and agreement wait: on PostgreSQL a transaction-scoped advisory lock on the
    pair. On SQLite the caller's first write does it (the database's one write lock), so
    this does nothing there: see ``service.consent.service.grant``."""
    if conn.dialect.name == "postgresql":
        pair = hashlib.sha256(f"consent\0{citizen_id}\0{agreement}".encode()).digest()
        key = int.from_bytes(pair[:8], "big", signed=True)
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


async def get_consent(conn: AsyncConnection, citizen_id: str, consent_id: str) -> ConsentRow | None:
    found = (
        await conn.execute(
            select(*_CONSENT_COLUMNS).where(consents.c.id == consent_id, consents.c.citizen_id == citizen_id)
        )
    ).first()
    return ConsentRow(**found._mapping) if found is not None else None


async def open_consents(
    conn: AsyncConnection, citizen_id: str, agreement: str, *, besides: str | None = None
) -> list[ConsentRow]:
    """The citizen's consents to ``agreement`` that are not revoked (expired ones included),
    other than the consent ``besides``."""
    rows = await conn.execute(
        select(*_CONSENT_COLUMNS).where(
            consents.c.citizen_id == citizen_id,
            consents.c.agreement == agreement,
            consents.c.status != "revoked",
            consents.c.id != (besides or ""),
        )
    )
    return [ConsentRow(**row._mapping) for row in rows]


async def page_consents(
    conn: AsyncConnection, citizen_id: str, after: tuple[datetime, str] | None, limit: int
) -> list[ConsentRow]:
    """The citizen's consents, oldest first, after the cursor ``(created_at, id)``."""
    query = select(*_CONSENT_COLUMNS).where(consents.c.citizen_id == citizen_id)
    if after is not None:
        created_at, consent_id = after
        query = query.where(
            or_(
                consents.c.created_at > created_at,
                and_(consents.c.created_at == created_at, consents.c.id > consent_id),
            )
        )
    rows = await conn.execute(query.order_by(consents.c.created_at, consents.c.id).limit(limit))
    return [ConsentRow(**row._mapping) for row in rows]


async def set_status(conn: AsyncConnection, consent_id: str, read: str, status: str, now: datetime) -> bool:
    """Change the consent's status from ``read`` (the stored status the caller judged) to
    ``status``; ``False``, changing nothing, when another change came first. On PostgreSQL
    a change racing this one waits for it to commit, then finds the status moved: a
    resume can never overwrite a revoke (final)."""
    result = await conn.execute(
        update(consents)
        .where(consents.c.id == consent_id, consents.c.status == read)
        .values(status=status, updated_at=now)
    )
    return bool(result.rowcount)


async def citizen_objections(conn: AsyncConnection, citizen_id: str) -> list[ObjectionRow]:
    rows = await conn.execute(
        select(objections.c.citizen_id, objections.c.agreement, objections.c.created_at)
        .where(objections.c.citizen_id == citizen_id)
        .order_by(objections.c.agreement)
    )
    return [ObjectionRow(*row) for row in rows]


async def has_objection(conn: AsyncConnection, citizen_id: str, agreement: str) -> bool:
    found = await conn.execute(
        select(objections.c.agreement).where(
            objections.c.citizen_id == citizen_id, objections.c.agreement == agreement
        )
    )
    return found.first() is not None


async def insert_objection(conn: AsyncConnection, citizen_id: str, agreement: str, now: datetime) -> bool:
    """Record the objection; ``False`` when the citizen has already objected (a concurrent
    request's objection included: it is not an error to the store)."""
    upsert = postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert
    inserted = await conn.execute(
        upsert(objections)
        .values(citizen_id=citizen_id, agreement=agreement, created_at=now)
        .on_conflict_do_nothing(index_elements=["citizen_id", "agreement"])
        .returning(objections.c.agreement)
    )
    return inserted.first() is not None


async def delete_objection(conn: AsyncConnection, citizen_id: str, agreement: str) -> bool:
    result = await conn.execute(
        delete(objections).where(objections.c.citizen_id == citizen_id, objections.c.agreement == agreement)
    )
    return bool(result.rowcount)
