"""``service.bulk`` stores rows exactly as SQLAlchemy's own insert does.

A bulk import writes through the driver (COPY on PostgreSQL, an executemany of tuples on
SQLite); a row stored differently (a timestamp in another text form on SQLite) would sort
and compare differently from every other row. So the same rows go in both ways, on the
test's rolled-back transaction, and what the database holds is compared raw.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncSession

from service import bulk
from service.crypto.keyring import DATA_KEYS
from service.records.repository import citizens

COLUMNS = ("id", "status", "version", "registered_by", "created_at", "updated_at")
WHEN = datetime(2026, 12, 2, 9, 15, 30, 123456, tzinfo=UTC)


def _rows(prefix: str, count: int) -> list[tuple[object, ...]]:
    return [(f"{prefix}-{n:04d}", "active", 1, "bulk-test", WHEN, WHEN) for n in range(count)]


async def _stored(session: AsyncSession, prefix: str) -> list[tuple[object, ...]]:
    rows = await session.execute(
        text(
            "SELECT status, version, registered_by, created_at, updated_at, erased_at FROM citizens "
            "WHERE id LIKE :prefix ORDER BY id"
        ),
        {"prefix": f"{prefix}-%"},
    )
    return [tuple(row) for row in rows]


class TestInsertRows:
    @pytest.mark.parametrize("count", [3, bulk.COPY_FROM + 5])
    async def test_rows_are_stored_as_sqlalchemy_stores_them(self, session: AsyncSession, count: int) -> None:
        conn = await session.connection()
        await conn.execute(
            insert(citizens), [dict(zip(COLUMNS, row, strict=True)) for row in _rows("core", count)]
        )

        await bulk.insert_rows(conn, citizens, COLUMNS, _rows("bulk", count))

        assert await _stored(session, "bulk") == await _stored(session, "core")

    async def test_ids_come_back_in_the_rows_order(self, session: AsyncSession) -> None:
        conn = await session.connection()
        await bulk.insert_rows(conn, citizens, COLUMNS, _rows("owner", 1))
        rows = [("owner-0000", f"dept-{n}", 1, "active", b"k", WHEN) for n in range(bulk.COPY_FROM + 1)]

        ids = await bulk.insert_rows_returning_ids(
            conn,
            DATA_KEYS,
            ("citizen_id", "department", "kek_version", "status", "wrapped_key", "created_at"),
            rows,
        )

        stored = await session.execute(
            text("SELECT id, department FROM data_keys WHERE citizen_id = 'owner-0000' ORDER BY id")
        )
        assert [tuple(row) for row in stored] == [
            (key_id, row[1]) for key_id, row in zip(ids, rows, strict=True)
        ]
