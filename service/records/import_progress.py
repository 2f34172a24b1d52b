"""Every query on ``import_runs``: how far ``tellonce import`` has committed each file."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Table, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from service.records.models import ImportRun

import_runs: Table = ImportRun.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class ImportRunRow:
    id: int
    last_line: int
    rows_read: int
    registered: int
    updated: int
    unchanged: int
    rejected: int
    finished_at: datetime | None


_IMPORT_RUN_COLUMNS = (
    import_runs.c.id,
    import_runs.c.last_line,
    import_runs.c.rows_read,
    import_runs.c.registered,
    import_runs.c.updated,
    import_runs.c.unchanged,
    import_runs.c.rejected,
    import_runs.c.finished_at,
)
IMPORT_COUNTS = ("rows_read", "registered", "updated", "unchanged", "rejected")


async def import_run(
    conn: AsyncConnection, department: str, mode: str, file_sha256: str
) -> ImportRunRow | None:
    row = (
        await conn.execute(
            select(*_IMPORT_RUN_COLUMNS).where(
                import_runs.c.department == department,
                import_runs.c.mode == mode,
                import_runs.c.file_sha256 == file_sha256,
            )
        )
    ).first()
    return ImportRunRow(*row) if row else None


async def start_import_run(
    conn: AsyncConnection, department: str, mode: str, file_sha256: str, now: datetime
) -> int:
    """The run of this file from its first line: a new row, or the old one reset."""
    fresh = {"last_line": 0, **dict.fromkeys(IMPORT_COUNTS, 0), "started_at": now, "updated_at": now}
    existing = await import_run(conn, department, mode, file_sha256)
    if existing is not None:
        await conn.execute(
            update(import_runs).where(import_runs.c.id == existing.id).values(**fresh, finished_at=None)
        )
        return existing.id
    inserted = await conn.execute(
        insert(import_runs)
        .values(department=department, mode=mode, file_sha256=file_sha256, **fresh)
        .returning(import_runs.c.id)
    )
    return int(inserted.scalar_one())


async def claim_import_run(conn: AsyncConnection, run_id: int, now: datetime) -> None:
    """A SQLite batch's first statement: a write, so the batch holds the one write lock
    before it reads anything."""
    await conn.execute(update(import_runs).where(import_runs.c.id == run_id).values(updated_at=now))


async def advance_import_run(
    conn: AsyncConnection, run_id: int, last_line: int, counts: dict[str, int], *, finished: datetime | None
) -> None:
    """Record a committed batch: its last line and what it did (added to the counts)."""
    changes: dict[str, object] = {name: import_runs.c[name] + counts.get(name, 0) for name in IMPORT_COUNTS}
    if finished is not None:
        changes["finished_at"] = finished
    await conn.execute(
        update(import_runs).where(import_runs.c.id == run_id).values(last_line=last_line, **changes)
    )
