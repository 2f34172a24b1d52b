"""Every query of the policy domain."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from service.catalog.models import CatalogVersion
from service.db import utcnow
from service.policy.models import AgreementVersion, PolicyEpoch

EPOCH_ROW = 1

# One tiny statement per request: the epoch row by primary key and the newest catalog's
# hash by primary key. A policy and a catalog change both move this key.
_EPOCH_KEY = text(
    "SELECT p.epoch, p.token, "
    "(SELECT c.content_hash FROM catalog_versions c ORDER BY c.version DESC LIMIT 1) "
    "FROM policy_epoch p WHERE p.id = :row"
)

EpochKey = tuple[int, str, str | None]


async def epoch_key(conn: AsyncConnection) -> EpochKey:
    row = (await conn.execute(_EPOCH_KEY, {"row": EPOCH_ROW})).first()
    if row is None:
        catalog_hash = (
            await conn.execute(
                select(CatalogVersion.content_hash).order_by(CatalogVersion.version.desc()).limit(1)
            )
        ).scalar_one_or_none()
        return (0, "", catalog_hash)
    return (int(row[0]), str(row[1]), row[2])


async def latest_catalog_content(conn: AsyncConnection) -> tuple[int, dict[str, object]] | None:
    row = (
        await conn.execute(
            select(CatalogVersion.version, CatalogVersion.content)
            .order_by(CatalogVersion.version.desc())
            .limit(1)
        )
    ).first()
    return None if row is None else (int(row[0]), dict(row[1]))


async def current_rows_core(conn: AsyncConnection) -> Sequence[tuple[str, str, int, str, dict[str, object]]]:
    """(agreement id, owner, version, status, content) of every current version."""
    table = AgreementVersion.__table__
    result = await conn.execute(
        select(table.c.agreement_id, table.c.owner, table.c.version, table.c.status, table.c.content).where(
            table.c.is_current.is_(True)
        )
    )
    return [(r[0], r[1], int(r[2]), r[3], dict(r[4])) for r in result]


async def bump_epoch(session: AsyncSession) -> int:
    """Move the epoch on; every process recompiles on its next request."""
    token = uuid.uuid4().hex
    result = await session.execute(
        update(PolicyEpoch)
        .where(PolicyEpoch.id == EPOCH_ROW)
        .values(epoch=PolicyEpoch.epoch + 1, token=token, changed_at=utcnow())
        .returning(PolicyEpoch.epoch)
    )
    epoch = result.scalar_one_or_none()
    if epoch is None:
        session.add(PolicyEpoch(id=EPOCH_ROW, epoch=1, token=token))
        await session.flush()
        return 1
    return int(epoch)


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
) -> None:
    """Retire ``previous`` and make ``row`` current (two statements, one transaction)."""
    if previous is not None:
        # Flushed first: the partial unique index allows one current version at a time.
        previous.is_current = False
        await session.flush()
    session.add(row)
    await session.flush()
