"""Where reads find citizens and current values: one ``CitizenStore`` protocol, three forms.

- ``CoreStore``: SQLAlchemy Core on a connection the caller holds (a request's or a test's
  transaction), through ``repository.py``.
- ``SqliteStore`` and ``PostgresStore``: the raw driver on long-lived connections, for
  the hot read path. Measured here, a query through SQLAlchemy's async layer on aiosqlite
  costs several times the same query on the driver, and a read makes two of them.

All three select the column lists of ``repository.py`` and return the same rows
(``tests/records/test_store.py``). The raw forms only read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import aiosqlite
import asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from service.records import repository
from service.records.repository import CitizenRow, ValueRow

_CITIZEN_SELECT = (
    f"SELECT {', '.join(c.name for c in repository.CITIZEN_COLUMNS)} "  # noqa: S608 (model column names)
    f"FROM {repository.citizens.name}"
)
_VALUE_SELECT = (
    f"SELECT {', '.join(c.name for c in repository.VALUE_COLUMNS)} "  # noqa: S608 (model column names)
    f"FROM {repository.values.name}"
)


class CitizenStore(Protocol):
    async def citizens(self, ids: Sequence[str]) -> dict[str, CitizenRow]:
        """The citizens among ``ids`` that exist, any status."""
        ...

    async def current_values(self, ids: Sequence[str], fields: Sequence[str]) -> list[ValueRow]:
        """The current value rows of ``fields`` for the citizens ``ids``."""
        ...


class ClosableStore(CitizenStore, Protocol):
    async def close(self) -> None: ...


class CoreStore:
    """The store on a connection the caller owns (and closes)."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def citizens(self, ids: Sequence[str]) -> dict[str, CitizenRow]:
        return await repository.get_citizens(self.conn, ids)

    async def current_values(self, ids: Sequence[str], fields: Sequence[str]) -> list[ValueRow]:
        return await repository.current_values(self.conn, ids, fields)


def _utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _value_row(r: Any) -> ValueRow:
    return ValueRow(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6], _utc(r[7]))


class SqliteStore:
    """One read-only aiosqlite connection: in WAL mode reads never wait for writers, and
    one connection's thread serves many concurrent reads without GIL contention."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self.connection = connection

    @classmethod
    async def open(cls, path: str) -> SqliteStore:
        connection = await aiosqlite.connect(path)
        await connection.execute("PRAGMA query_only=ON")
        await connection.execute("PRAGMA busy_timeout=10000")
        return cls(connection)

    async def citizens(self, ids: Sequence[str]) -> dict[str, CitizenRow]:
        if not ids:
            return {}
        query = f"{_CITIZEN_SELECT} WHERE id IN ({','.join('?' * len(ids))})"
        async with self.connection.execute(query, tuple(ids)) as cursor:
            rows = await cursor.fetchall()
        return {row[0]: CitizenRow(row[0], row[1], row[2]) for row in rows}

    async def current_values(self, ids: Sequence[str], fields: Sequence[str]) -> list[ValueRow]:
        if not ids or not fields:
            return []
        query = (
            f"{_VALUE_SELECT} WHERE citizen_id IN ({','.join('?' * len(ids))}) "
            f"AND field IN ({','.join('?' * len(fields))}) AND is_current = 1"
        )
        async with self.connection.execute(query, (*ids, *fields)) as cursor:
            rows = await cursor.fetchall()
        return [_value_row(r) for r in rows]

    async def close(self) -> None:
        await self.connection.close()


class PostgresStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, dsn: str) -> PostgresStore:
        pool = await asyncpg.create_pool(dsn, min_size=2, max_size=10)
        return cls(pool)

    async def citizens(self, ids: Sequence[str]) -> dict[str, CitizenRow]:
        if not ids:
            return {}
        rows = await self.pool.fetch(f"{_CITIZEN_SELECT} WHERE id = ANY($1::text[])", list(ids))
        return {row[0]: CitizenRow(row[0], row[1], row[2]) for row in rows}

    async def current_values(self, ids: Sequence[str], fields: Sequence[str]) -> list[ValueRow]:
        if not ids or not fields:
            return []
        rows = await self.pool.fetch(
            f"{_VALUE_SELECT} WHERE citizen_id = ANY($1::text[]) AND field = ANY($2::text[]) AND is_current",
            list(ids),
            list(fields),
        )
        return [_value_row(r) for r in rows]

    async def close(self) -> None:
        await asyncio.wait_for(self.pool.close(), timeout=10)


async def open_store(database_url: str) -> ClosableStore:
    """The raw-driver store for ``database_url``; the caller closes it."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return await SqliteStore.open(url.database or ":memory:")
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    return await PostgresStore.open(dsn)
