"""The catalog in force, stored as immutable versions."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from service.catalog import repository
from service.catalog.errors import CatalogMissing
from service.catalog.loader import catalog_content, catalog_hash
from service.catalog.models import CatalogVersion
from service.catalog.schemas import Catalog


async def current(session: AsyncSession) -> tuple[int, Catalog]:
    """The catalog in force and its version; 503 if none was ever applied."""
    row = await repository.latest(session)
    if row is None:
        raise CatalogMissing("No catalog has been applied yet; run `tellonce policies apply DIR`.")
    return row.version, Catalog.model_validate(row.content)


async def store(session: AsyncSession, catalog: Catalog, *, author: str, reason: str = "") -> int | None:
    """Store ``catalog`` as a new version; ``None`` if it equals the one in force."""
    digest = catalog_hash(catalog)
    row = await repository.latest(session)
    if row is not None and row.content_hash == digest:
        return None
    version = 1 if row is None else row.version + 1
    repository.add(
        session,
        CatalogVersion(
            version=version,
            content=catalog_content(catalog),
            content_hash=digest,
            author=author,
            reason=reason,
        ),
    )
    await session.flush()
    return version
