"""The catalog in force, stored as immutable versions."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from service.audit.schemas import canonical_json
from service.catalog import repository
from service.catalog.errors import CatalogMissing
from service.catalog.loader import catalog_content, catalog_hash
from service.catalog.models import CatalogVersion
from service.catalog.schemas import Catalog
from service.db import DriverReads


@dataclass(frozen=True)
class CatalogChange:
    """A new catalog version, as the audit records it: in full, with every signing-key change."""

    version: int
    document: str
    # (department, old verifier key, new verifier key); ``None`` where there was or is none.
    key_changes: list[tuple[str, str | None, str | None]]
    author: str
    reason: str


CatalogChangeHook = Callable[[AsyncSession, CatalogChange], Awaitable[None]]
# Hooks run inside the storing transaction, so the audit entry commits with the catalog.
on_catalog_change: list[CatalogChangeHook] = []


def key_changes(old: Catalog | None, new: Catalog) -> list[tuple[str, str | None, str | None]]:
    before = old.signing_keys if old is not None else {}
    after = new.signing_keys
    return [
        (department, before.get(department), after.get(department))
        for department in sorted(set(before) | set(after))
        if before.get(department) != after.get(department)
    ]


async def current(session: AsyncSession) -> tuple[int, Catalog]:
    """The catalog in force and its version; 503 if none was ever applied."""
    row = await repository.latest(session)
    if row is None:
        raise CatalogMissing("No catalog has been applied yet; run `tellonce policies apply DIR`.")
    return row.version, Catalog.model_validate(row.content)


async def current_on_driver(reads: DriverReads) -> tuple[int, Catalog]:
    """``current`` on the per-request raw driver (``GET /v1/catalog``)."""
    row = await repository.latest_on_driver(reads)
    if row is None:
        raise CatalogMissing("No catalog has been applied yet; run `tellonce policies apply DIR`.")
    return row[0], Catalog.model_validate(row[1])


async def store(session: AsyncSession, catalog: Catalog, *, author: str, reason: str = "") -> int | None:
    """Store ``catalog`` as a new version; ``None`` if it equals the one in force."""
    digest = catalog_hash(catalog)
    row = await repository.latest(session)
    if row is not None and row.content_hash == digest:
        return None
    version = 1 if row is None else row.version + 1
    content = catalog_content(catalog)
    repository.add(
        session,
        CatalogVersion(version=version, content=content, content_hash=digest, author=author, reason=reason),
    )
    await session.flush()
    previous = Catalog.model_validate(row.content) if row is not None else None
    change = CatalogChange(version, canonical_json(content), key_changes(previous, catalog), author, reason)
    for hook in on_catalog_change:
        await hook(session, change)
    return version


_catalog_versions = CatalogVersion.__table__
# Parsed catalogs by content hash: a hash names one content forever, so a cached
# catalog is never stale (version numbers alone could be reused by a rolled-back write).
_parsed: dict[str, Catalog] = {}


async def current_cached(conn: AsyncConnection) -> Catalog:
    """The catalog in force, for callers that read it often (subscriptions, the import,
    seeding, ``policies explain``): one indexed lookup, parsed once per content."""
    digest = (
        await conn.execute(
            select(_catalog_versions.c.content_hash).order_by(_catalog_versions.c.version.desc()).limit(1)
        )
    ).scalar_one_or_none()
    if digest is None:
        raise CatalogMissing("No catalog has been applied yet; run `tellonce policies apply DIR`.")
    catalog = _parsed.get(digest)
    if catalog is None:
        content = (
            await conn.execute(
                select(_catalog_versions.c.content).where(_catalog_versions.c.content_hash == digest).limit(1)
            )
        ).scalar_one()
        catalog = Catalog.model_validate(content)
        if len(_parsed) > 8:
            _parsed.clear()
        _parsed[digest] = catalog
    return catalog
