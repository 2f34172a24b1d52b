from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.catalog.models import CatalogVersion
from service.db import DriverReads

# The catalog in force, on the raw driver (its JSON arrives as text from both drivers);
# found by ``max()``, a search of the primary key on both databases.
_NEWEST = (
    "SELECT version, content FROM catalog_versions "
    "WHERE version = (SELECT max(version) FROM catalog_versions)"
)


async def latest(session: AsyncSession) -> CatalogVersion | None:
    result = await session.execute(select(CatalogVersion).order_by(CatalogVersion.version.desc()).limit(1))
    return result.scalar_one_or_none()


async def latest_on_driver(reads: DriverReads) -> tuple[int, Any] | None:
    """``latest``'s version and content, on the per-request raw driver."""
    rows = await reads.rows(_NEWEST)
    if not rows:
        return None
    version, content = rows[0]
    return int(version), json.loads(content) if isinstance(content, str | bytes) else content


def add(session: AsyncSession, row: CatalogVersion) -> None:
    session.add(row)
