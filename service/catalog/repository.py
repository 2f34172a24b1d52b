from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.catalog.models import CatalogVersion


async def latest(session: AsyncSession) -> CatalogVersion | None:
    result = await session.execute(select(CatalogVersion).order_by(CatalogVersion.version.desc()).limit(1))
    return result.scalar_one_or_none()


def add(session: AsyncSession, row: CatalogVersion) -> None:
    session.add(row)
