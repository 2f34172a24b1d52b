"""The hot read queries, on the raw database driver over long-lived connections.

Measured here, a query through SQLAlchemy's async layer on aiosqlite costs several
times the same query on the driver, and a read makes two of them. So the read path
(read and batch-get) fetches citizens and current values here, with the driver's own
placeholders; the schema still comes only from the models and Alembic, and every
other query stays in ``repository.py``. The reader only reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import aiosqlite
import asyncpg
from sqlalchemy.engine import make_url

from service.records.repository import CitizenRow, ValueRow

_VALUE_COLUMNS = "citizen_id, field, version, owner, data_key_id, ciphertext, written_by, written_at"


class Reader(Protocol):
    async def citizens(self, ids: Sequence[str]) -> dict[str, CitizenRow]: ...

    async def current_values(self, ids: Sequence[str], fields: Sequence[str]) -> list[ValueRow]: ...

    async def close(self) -> None: ...


def _utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class SqliteReader:
    """One read-only aiosqlite connection: in WAL mode reads never wait for writers, and
    one connection's thread serves many concurrent reads without GIL contention."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self.connection = connection

    @classmethod
    async def open(cls, path: str) -> SqliteReader:
        connection = await aiosqlite.connect(path)
        await connection.execute("PRAGMA query_only=ON")
        await connection.execute("PRAGMA busy_timeout=10000")
        return cls(connection)

    async def citizens(self, ids: Sequence[str]) -> dict[str, CitizenRow]:
        marks = ",".join("?" * len(ids))
        query = f"SELECT id, status, version FROM citizens WHERE id IN ({marks})"  # noqa: S608 (placeholders only)
        async with self.connection.execute(query, tuple(ids)) as cursor:
            rows = await cursor.fetchall()
        return {row[0]: CitizenRow(row[0], row[1], row[2]) for row in rows}

    async def current_values(self, ids: Sequence[str], fields: Sequence[str]) -> list[ValueRow]:
        if not ids or not fields:
            return []
        query = (
            f"SELECT {_VALUE_COLUMNS} FROM field_values "  # noqa: S608 (placeholders only)
            f"WHERE citizen_id IN ({','.join('?' * len(ids))}) AND field IN ({','.join('?' * len(fields))}) "
            "AND is_current = 1"
        )
        async with self.connection.execute(query, (*ids, *fields)) as cursor:
            rows = await cursor.fetchall()
        return [ValueRow(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6], _utc(r[7])) for r in rows]

    async def close(self) -> None:
        await self.connection.close()


class PostgresReader:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, dsn: str) -> PostgresReader:
        pool = await asyncpg.create_pool(dsn, min_size=2, max_size=10)
        return cls(pool)

    async def citizens(self, ids: Sequence[str]) -> dict[str, CitizenRow]:
        rows = await self.pool.fetch(
            "SELECT id, status, version FROM citizens WHERE id = ANY($1::text[])", list(ids)
        )
        return {row[0]: CitizenRow(row[0], row[1], row[2]) for row in rows}

    async def current_values(self, ids: Sequence[str], fields: Sequence[str]) -> list[ValueRow]:
        if not ids or not fields:
            return []
        rows = await self.pool.fetch(
            f"SELECT {_VALUE_COLUMNS} FROM field_values "  # noqa: S608 (constant column list)
            "WHERE citizen_id = ANY($1::text[]) AND field = ANY($2::text[]) AND is_current",
            list(ids),
            list(fields),
        )
        return [ValueRow(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6], _utc(r[7])) for r in rows]

    async def close(self) -> None:
        await asyncio.wait_for(self.pool.close(), timeout=10)


async def open_reader(database_url: str) -> Reader:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return await SqliteReader.open(url.database or ":memory:")
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    return await PostgresReader.open(dsn)
