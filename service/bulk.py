"""Many rows into one table by the driver's own bulk path, in the caller's transaction.

SQLAlchemy's executemany runs every parameter of every row through its bind processors in
Python, which for a bulk import costs more than the database's work (measured in
``bench/import.py``). Here the rows are tuples in the order of ``columns``:

- PostgreSQL: asyncpg's binary COPY (``copy_records_to_table``) from ``COPY_FROM`` rows up;
  fewer go as one ordinary executemany, which costs fewer round trips than a COPY.
- SQLite: one ``executemany`` of the tuples through the driver. Only timestamp and date
  columns are converted, by the column's own bind processor (so they are stored exactly as
  SQLAlchemy stores them), once per distinct value.

Column defaults made in Python are not applied: a column left out gets its server default,
or NULL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Date, DateTime, Table, TypeDecorator, insert
from sqlalchemy.ext.asyncio import AsyncConnection

COPY_FROM = 64

Row = tuple[Any, ...]


async def insert_rows(
    conn: AsyncConnection, table: Table, columns: Sequence[str], rows: Sequence[Row]
) -> None:
    """Insert ``rows`` (tuples in ``columns`` order) into ``table``."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        if len(rows) >= COPY_FROM:
            raw = await conn.get_raw_connection()
            await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
                table.name, columns=list(columns), records=rows
            )
        else:
            await conn.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in rows])
        return
    statement = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"  # noqa: S608
    await conn.exec_driver_sql(statement, _sqlite_rows(conn, table, columns, rows))


async def insert_rows_returning_ids(
    conn: AsyncConnection, table: Table, columns: Sequence[str], rows: Sequence[Row]
) -> list[int]:
    """Insert ``rows`` into a table with an integer ``id`` key made by the database; the
    new rows' ids, in order.

    PostgreSQL: the ids are drawn from the column's sequence first and copied with the rows.
    SQLite: the rows' ids are consecutive and end at ``max(id)``, since the transaction
    holds the one write lock from its first insert (as the audit writer relies on)."""
    if not rows:
        return []
    if conn.dialect.name == "postgresql":
        ids = await draw_ids(conn, table, len(rows))
        await insert_rows(
            conn, table, ["id", *columns], [(row_id, *row) for row_id, row in zip(ids, rows, strict=True)]
        )
        return ids
    await insert_rows(conn, table, columns, rows)
    last = int((await conn.exec_driver_sql(f"SELECT max(id) FROM {table.name}")).scalar_one())  # noqa: S608
    return list(range(last - len(rows) + 1, last + 1))


async def draw_ids(conn: AsyncConnection, table: Table, count: int) -> list[int]:
    """PostgreSQL: ``count`` new ids from the sequence of ``table``'s ``id`` column, in
    increasing order (another session drawing at the same time may leave gaps between
    them)."""
    if count <= 0:
        return []
    drawn = await conn.exec_driver_sql(
        f"SELECT nextval(pg_get_serial_sequence('{table.name}', 'id')) "  # noqa: S608
        f"FROM generate_series(1, {int(count)})"
    )
    return sorted(int(row_id) for row_id in drawn.scalars())


def _sqlite_rows(
    conn: AsyncConnection, table: Table, columns: Sequence[str], rows: Sequence[Row]
) -> list[Row]:
    converters: list[Callable[[Any], Any] | None] = []
    for name in columns:
        column_type = table.c[name].type
        stored_as = column_type.impl_instance if isinstance(column_type, TypeDecorator) else column_type
        processor = None
        if isinstance(stored_as, (DateTime, Date)):
            # The dialect's own form of the type: its processor writes SQLite's text.
            processor = column_type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        converters.append(_memoised(processor) if processor is not None else None)
    converted = [(position, convert) for position, convert in enumerate(converters) if convert is not None]
    if not converted:
        return list(rows)
    # Only the converted columns are touched: a zip over every column of every row cost
    # twice as much (a batch's value rows have one timestamp among eleven columns).
    out: list[Row] = []
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"a row has {len(row)} values for {len(columns)} columns")
        changed = list(row)
        for position, convert in converted:
            changed[position] = convert(changed[position])
        out.append(tuple(changed))
    return out


def _memoised(processor: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A batch's rows mostly share one timestamp: convert each distinct value once."""
    seen: dict[Any, Any] = {}

    def convert(value: Any) -> Any:
        if value is None:
            return None
        try:
            return seen[value]
        except KeyError:
            converted = seen[value] = processor(value)
            return converted

    return convert
