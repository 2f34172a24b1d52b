"""Where reads find citizens and current values: one ``CitizenStore`` protocol, three forms.

- ``CoreStore``: SQLAlchemy Core on a connection the caller holds (a request's or a test's
  transaction), through ``repository.py``.
- ``SqliteStore`` and ``PostgresStore``: the raw driver on long-lived connections, for
  the hot read path (``service.db.DriverReads``: sqlite3 on the event loop, asyncpg).
  Measured here, a query through SQLAlchemy's async layer on aiosqlite costs several
  times the same query on the driver, and a read makes two of them.

All three select the column lists of ``repository.py`` and return the same rows
(``tests/records/test_store.py``). The raw forms only read.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection

from service.consent import repository as consent_repository
from service.db import PostgresReads, SqliteReads, open_driver_reads
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


def _citizen_with_values_sql(fields: str, postgres: bool) -> str:
    """One citizen's row ('c', then its columns, padded), then ('v', a value row) for each
    current value of the fields ``fields`` selects, only while the citizen has the status
    asked for. Parameters on PostgreSQL: $1 the id, $2 the fields, $3 the status; on SQLite
    in the order of the placeholders."""
    citizen_columns = [c.name for c in repository.CITIZEN_COLUMNS]
    value_columns = [c.name for c in repository.VALUE_COLUMNS]
    # PostgreSQL types the padding by the value columns it stands beside.
    pads = ["NULL::text", "NULL::bigint", "NULL::bytea", "NULL::text", "NULL::timestamptz"]
    padding = pads if postgres else ["NULL"] * len(pads)  # 3 citizen columns + 5 = 8 value columns
    one = "$1" if postgres else "?"
    status = "$3" if postgres else "?"
    citizens, values = repository.citizens.name, repository.values.name
    return (
        f"SELECT 'c', {', '.join(citizen_columns + padding)} FROM {citizens} WHERE id = {one} "  # noqa: S608
        f"UNION ALL SELECT 'v', {', '.join(value_columns)} FROM {values} "
        f"WHERE citizen_id = {one} AND {fields} AND is_current "
        f"AND EXISTS (SELECT 1 FROM {citizens} c WHERE c.id = {one} AND c.status = {status})"
    )


_CITIZEN_WITH_VALUES_PG = _citizen_with_values_sql("field = ANY($2::text[])", postgres=True)


@functools.lru_cache(maxsize=128)
def _sqlite_citizen_with_values(fields: int) -> str:
    """The SQLite statement for ``fields`` field names, made once per count."""
    return _citizen_with_values_sql(f"field IN ({','.join('?' * fields)})", postgres=False)


class CitizenStore(Protocol):
    async def citizens(self, ids: Sequence[str]) -> dict[str, CitizenRow]:
        """The citizens among ``ids`` that exist, any status."""
        ...

    async def current_values(self, ids: Sequence[str], fields: Sequence[str]) -> list[ValueRow]:
        """The current value rows of ``fields`` for the citizens ``ids``."""
        ...

    async def choices(
        self, ids: Sequence[str], agreements: Sequence[str]
    ) -> list[consent_repository.ChoiceRow]:
        """The active consents and the objections of the citizens ``ids`` to ``agreements``."""
        ...

    async def citizens_with_choices(
        self, ids: Sequence[str], agreements: Sequence[str]
    ) -> tuple[dict[str, CitizenRow], list[consent_repository.ChoiceRow]]:
        """``citizens`` and ``choices`` together (on PostgreSQL in one round trip)."""
        ...

    async def citizen_with_values(
        self, citizen_id: str, status: str, fields: Sequence[str]
    ) -> tuple[CitizenRow | None, list[ValueRow]]:
        """The citizen (any status), and the current values of ``fields`` only if its status
        is ``status``, else none: on the raw drivers in one statement, whose condition on the
        status keeps any other status's values in the database."""
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

    async def choices(
        self, ids: Sequence[str], agreements: Sequence[str]
    ) -> list[consent_repository.ChoiceRow]:
        return await consent_repository.choices(self.conn, ids, agreements)

    async def citizens_with_choices(
        self, ids: Sequence[str], agreements: Sequence[str]
    ) -> tuple[dict[str, CitizenRow], list[consent_repository.ChoiceRow]]:
        return await self.citizens(ids), await self.choices(ids, agreements)

    async def citizen_with_values(
        self, citizen_id: str, status: str, fields: Sequence[str]
    ) -> tuple[CitizenRow | None, list[ValueRow]]:
        found = (await self.citizens([citizen_id])).get(citizen_id)
        if found is None or found.status != status or not fields:
            return found, []
        return found, await self.current_values([citizen_id], fields)


def _split(rows: Sequence[Any]) -> tuple[CitizenRow | None, list[ValueRow]]:
    """``_citizen_with_values_sql``'s rows as the citizen and its value rows."""
    found = None
    values = []
    for row in rows:
        if row[0] == "c":
            found = CitizenRow(row[1], row[2], row[3])
        else:
            values.append(
                ValueRow(row[1], row[2], row[3], row[4], row[5], bytes(row[6]), row[7], _utc(row[8]))
            )
    return found, values


def _utc(value: Any) -> datetime:
    """A stored time as an aware UTC datetime: asyncpg's datetime, or SQLite's text."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value)
    try:
        # SQLite holds naive UTC text: parsed with its offset in one call, 0.22 us here
        # against 1.0 for parsing and then ``replace(tzinfo=UTC)`` (2% of the secured
        # read's event loop under wrk, py-spy; bench/README.md).
        return datetime.fromisoformat(text + "+00:00")
    except ValueError:
        parsed = datetime.fromisoformat(text)  # text with an offset of its own
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _choice_row(r: Any) -> consent_repository.ChoiceRow:
    """A row of ``raw_choices_query``."""
    return consent_repository.choice_row(r, _utc(r[4]) if r[4] is not None else None)


def _value_row(r: Any) -> ValueRow:
    return ValueRow(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6], _utc(r[7]))


class SqliteStore:
    """Reads on the process's one read-only sqlite3 connection (``SqliteReads``): in WAL
    mode reads never wait for writers, and an indexed read of one citizen's rows takes
    less time on the event loop than the thread hand-off aiosqlite would make."""

    def __init__(self, reads: SqliteReads) -> None:
        self.reads = reads

    async def citizens(self, ids: Sequence[str]) -> dict[str, CitizenRow]:
        if not ids:
            return {}
        query = f"{_CITIZEN_SELECT} WHERE id IN ({','.join('?' * len(ids))})"
        rows = await self.reads.rows(query, ids)
        return {row[0]: CitizenRow(row[0], row[1], row[2]) for row in rows}

    async def current_values(self, ids: Sequence[str], fields: Sequence[str]) -> list[ValueRow]:
        if not ids or not fields:
            return []
        # ``is_current`` as the partial index ``uq_field_values_current`` states it, so
        # SQLite searches that index (one entry per citizen and field) rather than every
        # version of the field (``tests/test_query_plans.py`` shows the plan).
        query = (
            f"{_VALUE_SELECT} WHERE citizen_id IN ({','.join('?' * len(ids))}) "
            f"AND field IN ({','.join('?' * len(fields))}) AND is_current"
        )
        rows = await self.reads.rows(query, (*ids, *fields))
        return [_value_row(r) for r in rows]

    async def choices(
        self, ids: Sequence[str], agreements: Sequence[str]
    ) -> list[consent_repository.ChoiceRow]:
        if not ids or not agreements:
            return []
        where = (
            f"citizen_id IN ({','.join('?' * len(ids))}) AND agreement IN ({','.join('?' * len(agreements))})"
        )
        query = consent_repository.raw_choices_query(where)
        rows = await self.reads.rows(query, (*ids, *agreements, *ids, *agreements))
        return [_choice_row(r) for r in rows]

    async def citizens_with_choices(
        self, ids: Sequence[str], agreements: Sequence[str]
    ) -> tuple[dict[str, CitizenRow], list[consent_repository.ChoiceRow]]:
        # Both run on the event loop, without a hand-off: two statements cost no round trip.
        return await self.citizens(ids), await self.choices(ids, agreements)

    async def citizen_with_values(
        self, citizen_id: str, status: str, fields: Sequence[str]
    ) -> tuple[CitizenRow | None, list[ValueRow]]:
        if not fields:
            return (await self.citizens([citizen_id])).get(citizen_id), []
        query = _sqlite_citizen_with_values(len(fields))
        return _split(await self.reads.rows(query, (citizen_id, citizen_id, *fields, citizen_id, status)))

    async def close(self) -> None:
        await self.reads.close()


class PostgresStore:
    """Reads on an asyncpg pool (the process's ``PostgresReads`` pool in a server)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

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

    async def choices(
        self, ids: Sequence[str], agreements: Sequence[str]
    ) -> list[consent_repository.ChoiceRow]:
        if not ids or not agreements:
            return []
        where = "citizen_id = ANY($1::text[]) AND agreement = ANY($2::text[])"
        query = consent_repository.raw_choices_query(where, postgres=True)
        rows = await self.pool.fetch(query, list(ids), list(agreements))
        return [_choice_row(r) for r in rows]

    async def citizens_with_choices(
        self, ids: Sequence[str], agreements: Sequence[str]
    ) -> tuple[dict[str, CitizenRow], list[consent_repository.ChoiceRow]]:
        if not ids:
            return {}, []
        if not agreements:
            return await self.citizens(ids), []
        where = "citizen_id = ANY($1::text[]) AND agreement = ANY($2::text[])"
        query = (
            f"SELECT 'p', {', '.join(c.name for c in repository.CITIZEN_COLUMNS)}, NULL::timestamptz, "  # noqa: S608
            f"{consent_repository.CHOICE_PADDING[True]} "
            f"FROM {repository.citizens.name} WHERE id = ANY($1::text[]) "
            f"UNION ALL {consent_repository.raw_choices_query(where, postgres=True)}"
        )
        rows = await self.pool.fetch(query, list(ids), list(agreements))
        found = {r[1]: CitizenRow(r[1], r[2], r[3]) for r in rows if r[0] == "p"}
        return found, [_choice_row(r) for r in rows if r[0] != "p"]

    async def citizen_with_values(
        self, citizen_id: str, status: str, fields: Sequence[str]
    ) -> tuple[CitizenRow | None, list[ValueRow]]:
        if not fields:
            return (await self.citizens([citizen_id])).get(citizen_id), []
        query = _CITIZEN_WITH_VALUES_PG
        return _split(await self.pool.fetch(query, citizen_id, list(fields), status))

    async def close(self) -> None:
        await asyncio.wait_for(self.pool.close(), timeout=10)


def store_on(reads: SqliteReads | PostgresReads) -> ClosableStore:
    """The raw-driver store on ``reads``; closing the store closes them."""
    if isinstance(reads, SqliteReads):
        return SqliteStore(reads)
    return PostgresStore(reads.pool)


async def open_store(database_url: str) -> ClosableStore:
    """The raw-driver store for ``database_url``, on reads of its own; the caller closes it."""
    return store_on(await open_driver_reads(database_url))
