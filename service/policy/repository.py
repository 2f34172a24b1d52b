"""Every query of the policy domain."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from service.catalog.models import CatalogVersion
from service.db import begin_on_sqlite
from service.policy.models import AgreementVersion


async def latest_catalog_content(conn: AsyncConnection) -> tuple[int, dict[str, object]] | None:
    row = (
        await conn.execute(
            select(CatalogVersion.version, CatalogVersion.content).where(
                CatalogVersion.version == select(func.max(CatalogVersion.version)).scalar_subquery()
            )
        )
    ).first()
    return None if row is None else (int(row[0]), dict(row[1]))


async def current_rows_core(conn: AsyncConnection) -> Sequence[tuple[str, str, int, str, dict[str, object]]]:
    """(agreement id, owner, version, status, content) of every current version.

    The condition is written as the partial index ``uq_agreement_versions_current`` states
    it: SQLite uses a partial index only for a query that repeats its ``WHERE``, and would
    otherwise read every version ever stored (``tests/test_query_plans.py``)."""
    table = AgreementVersion.__table__
    result = await conn.execute(
        select(table.c.agreement_id, table.c.owner, table.c.version, table.c.status, table.c.content).where(
            text("is_current")
        )
    )
    return [(r[0], r[1], int(r[2]), r[3], dict(r[4])) for r in result]


async def current_versions(session: AsyncSession, owner: str | None = None) -> list[AgreementVersion]:
    query = select(AgreementVersion).where(AgreementVersion.is_current.is_(True))
    if owner is not None:
        query = query.where(AgreementVersion.owner == owner)
    return list((await session.execute(query.order_by(AgreementVersion.agreement_id))).scalars())


async def current_version(session: AsyncSession, agreement_id: str) -> AgreementVersion | None:
    result = await session.execute(
        select(AgreementVersion).where(
            AgreementVersion.agreement_id == agreement_id, AgreementVersion.is_current.is_(True)
        )
    )
    return result.scalar_one_or_none()


async def page_current(
    session: AsyncSession, *, owner: str | None, after: str | None, limit: int
) -> list[AgreementVersion]:
    query = select(AgreementVersion).where(AgreementVersion.is_current.is_(True))
    if owner is not None:
        query = query.where(AgreementVersion.owner == owner)
    if after is not None:
        query = query.where(AgreementVersion.agreement_id > after)
    query = query.order_by(AgreementVersion.agreement_id).limit(limit)
    return list((await session.execute(query)).scalars())


async def page_versions(
    session: AsyncSession, agreement_id: str, *, after: int | None, limit: int
) -> list[AgreementVersion]:
    query = select(AgreementVersion).where(AgreementVersion.agreement_id == agreement_id)
    if after is not None:
        query = query.where(AgreementVersion.version > after)
    query = query.order_by(AgreementVersion.version).limit(limit)
    return list((await session.execute(query)).scalars())


async def add_version(
    session: AsyncSession, previous: AgreementVersion | None, row: AgreementVersion
) -> bool:
    """Retire ``previous`` and make ``row`` current (in the caller's transaction); ``False``
    (nothing written) when another transaction got there first.

    Checked, then written, with no lock between: two changes made from the same version
    both get here. Retiring is conditional on ``previous`` still being current, so on
    PostgreSQL the second waits for the first to commit and then retires nothing; a
    second first version of one agreement breaks a unique index and is rolled back to the
    savepoint. (SQLite lets one writer in at a time.)
    """
    if previous is not None:
        retired = await session.execute(
            update(AgreementVersion)
            .where(AgreementVersion.id == previous.id, AgreementVersion.is_current.is_(True))
            .values(is_current=False)
            .execution_options(synchronize_session=False)
        )
        if retired.rowcount != 1:  # type: ignore[attr-defined]
            return False
        # Flushed first: the partial unique index allows one current version at a time.
        set_committed_value(previous, "is_current", False)
    try:
        await begin_on_sqlite(await session.connection())
        async with session.begin_nested():
            session.add(row)
            await session.flush()
    except IntegrityError:
        return False
    return True


# Versions named in one statement, each a term of an OR list: SQLite refuses a statement
# whose expression tree is deeper than 1000, which an OR list of that many versions reaches.
VERSIONS_PER_QUERY = 200


async def version_contents(
    conn: AsyncConnection, versions: Sequence[tuple[str, int]]
) -> dict[tuple[str, int], dict[str, object]]:
    """The stored content of each (agreement id, version) asked for that exists, read
    ``VERSIONS_PER_QUERY`` versions at a time."""
    table = AgreementVersion.__table__
    wanted = sorted(set(versions))
    found: dict[tuple[str, int], dict[str, object]] = {}
    for start in range(0, len(wanted), VERSIONS_PER_QUERY):
        chunk = wanted[start : start + VERSIONS_PER_QUERY]
        named = or_(*(and_(table.c.agreement_id == a, table.c.version == v) for a, v in chunk))
        result = await conn.execute(
            select(table.c.agreement_id, table.c.version, table.c.content).where(named)
        )
        found.update({(str(r[0]), int(r[1])): dict(r[2]) for r in result})
    return found


async def signatures_given(session: AsyncSession, agreement_id: str) -> dict[str, int]:
    """Each owner's signature stored on a version of ``agreement_id``, with the first
    version that carried it."""
    rows = await session.execute(
        select(AgreementVersion.version, AgreementVersion.content)
        .where(AgreementVersion.agreement_id == agreement_id)
        .order_by(AgreementVersion.version)
    )
    given: dict[str, int] = {}
    for version, content in rows:
        signature = content.get("signature") if isinstance(content, dict) else None
        if isinstance(signature, str):
            given.setdefault(signature, version)
    return given
