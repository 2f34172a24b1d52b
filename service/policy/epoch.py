"""The revocation epoch: one row every process checks on each request.

A policy change, a catalog change and a disabled client all move it (``bump_epoch``), and
every process then recompiles its policy and re-reads clients' standing on its next
request. Policy owns the row; auth moves it through ``bump_epoch`` and reads it through
``epoch_key``.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from service.catalog.models import CatalogVersion
from service.db import utcnow
from service.policy.models import PolicyEpoch

EPOCH_ROW = 1

# One tiny statement per request: the epoch row by primary key and the newest catalog's
# hash by primary key. A policy and a catalog change both move this key.
_EPOCH_KEY = text(
    "SELECT p.epoch, p.token, "
    "(SELECT c.content_hash FROM catalog_versions c ORDER BY c.version DESC LIMIT 1) "
    "FROM policy_epoch p WHERE p.id = :row"
)

# (epoch, token, newest catalog hash): equal keys mean nothing the policy depends on moved.
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
