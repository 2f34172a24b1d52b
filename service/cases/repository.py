"""Every query of the cases domain."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from service.cases.models import Case

# (department, case reference): a reference is its department's own.
CaseKey = tuple[str, str]
# Cases named in one statement, each a term of an OR list: SQLite refuses a statement whose
# expression tree is deeper than 1000, which an OR list of that many cases reaches.
CASES_PER_QUERY = 200


@dataclass(frozen=True)
class CaseRow:
    department: str
    case_ref: str
    opened_at: datetime
    closed_at: datetime | None


async def open_case(conn: AsyncConnection, department: str, case_ref: str, at: datetime) -> None:
    """Record the case if it is new; an open or closed case is left as it is."""
    upsert = postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert
    await conn.execute(
        upsert(Case)
        .values(department=department, case_ref=case_ref, opened_at=at)
        .on_conflict_do_nothing(index_elements=["department", "case_ref"])
    )


async def get_case(conn: AsyncConnection, department: str, case_ref: str) -> CaseRow | None:
    row = (
        await conn.execute(
            select(Case.department, Case.case_ref, Case.opened_at, Case.closed_at).where(
                Case.department == department, Case.case_ref == case_ref
            )
        )
    ).first()
    return None if row is None else CaseRow(row[0], row[1], row[2], row[3])


async def close_case(conn: AsyncConnection, department: str, case_ref: str, at: datetime, by: str) -> bool:
    """Close an open case; False if it was closed already (it keeps its first closing).

    One conditional UPDATE, so of two closings at once exactly one changes the row: the
    other waits for its row lock (PostgreSQL) or the write lock (SQLite), then finds the
    case closed."""
    result = await conn.execute(
        update(Case)
        .where(Case.department == department, Case.case_ref == case_ref, Case.closed_at.is_(None))
        .values(closed_at=at, closed_by=by)
    )
    return result.rowcount == 1


async def closed_at(conn: AsyncConnection, keys: Iterable[CaseKey]) -> dict[CaseKey, datetime]:
    """When each of ``keys`` was closed; open and unknown cases are left out. Read
    ``CASES_PER_QUERY`` cases at a time, however many are asked for."""
    wanted = sorted(set(keys))
    found: dict[CaseKey, datetime] = {}
    for start in range(0, len(wanted), CASES_PER_QUERY):
        chunk = wanted[start : start + CASES_PER_QUERY]
        statement = select(Case.department, Case.case_ref, Case.closed_at).where(
            or_(*(and_(Case.department == d, Case.case_ref == r) for d, r in chunk)),
            Case.closed_at.is_not(None),
        )
        found.update({(d, r): at for d, r, at in await conn.execute(statement) if at is not None})
    return found
