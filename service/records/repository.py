"""The Core queries on citizens and field values, on a connection.

The access path runs these on a pooled connection rather than through an ORM session:
measured on this machine, a session per request costs about three times the read itself.
The hot reads (citizens and current values by id) also have raw-driver forms in
``store.py``, built from the column lists here; ``tests/records/test_store.py`` checks
that every form returns the same rows.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import LargeBinary, String, Table, bindparam, delete, func, select, true, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from service import bulk
from service.records.models import Citizen, FieldValue, VerifyProbe

citizens: Table = Citizen.__table__  # type: ignore[assignment]
values: Table = FieldValue.__table__  # type: ignore[assignment]
probes: Table = VerifyProbe.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class CitizenRow:
    id: str
    status: str
    version: int


@dataclass(frozen=True)
class ValueRow:
    citizen_id: str
    field: str
    version: int
    owner: str
    data_key_id: int
    ciphertext: bytes
    written_by: str
    written_at: datetime


# The columns of a ``CitizenRow`` and a ``ValueRow``, in order: the one list every read
# path (Core here, the raw drivers in ``store.py``) selects.
CITIZEN_COLUMNS = (citizens.c.id, citizens.c.status, citizens.c.version)
VALUE_COLUMNS = (
    values.c.citizen_id,
    values.c.field,
    values.c.version,
    values.c.owner,
    values.c.data_key_id,
    values.c.ciphertext,
    values.c.written_by,
    values.c.written_at,
)


async def get_citizens(conn: AsyncConnection, citizen_ids: Sequence[str]) -> dict[str, CitizenRow]:
    if not citizen_ids:
        return {}
    rows = await conn.execute(select(*CITIZEN_COLUMNS).where(citizens.c.id.in_(citizen_ids)))
    return {row[0]: CitizenRow(*row) for row in rows}


async def current_values(
    conn: AsyncConnection, citizen_ids: Sequence[str], fields: Iterable[str]
) -> list[ValueRow]:
    wanted = list(fields)
    if not wanted or not citizen_ids:
        return []
    rows = await conn.execute(
        select(*VALUE_COLUMNS).where(
            values.c.citizen_id.in_(citizen_ids),
            values.c.field.in_(wanted),
            values.c.is_current.is_(True),
        )
    )
    return [ValueRow(*r) for r in rows]


async def history(
    conn: AsyncConnection, citizen_id: str, field: str, *, before_version: int | None, limit: int
) -> list[ValueRow]:
    query = select(*VALUE_COLUMNS).where(values.c.citizen_id == citizen_id, values.c.field == field)
    if before_version is not None:
        query = query.where(values.c.version < before_version)
    rows = await conn.execute(query.order_by(values.c.version.desc()).limit(limit))
    return [ValueRow(*r) for r in rows]


async def count_citizens(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(citizens))).scalar_one())


async def candidates_by_blind_indexes(
    conn: AsyncConnection, field: str, blind_indexes: Sequence[bytes]
) -> list[ValueRow]:
    """Current values of ``field`` whose blind index is any of ``blind_indexes``."""
    if conn.dialect.name == "postgresql" and blind_indexes:
        # One index lookup per blind index, in one statement. OFFSET 0 keeps the planner
        # from flattening the lookup into a hash join over every national id, which it
        # picks while the table's statistics lag behind a bulk import.
        probe = (
            func.unnest(bindparam("blind_indexes", list(blind_indexes), type_=ARRAY(LargeBinary)))
            .table_valued("blind_index")
            .render_derived(name="probe")
        )
        match = (
            select(*VALUE_COLUMNS)
            .where(
                values.c.field == field,
                values.c.blind_index == probe.c.blind_index,
                values.c.is_current.is_(True),
            )
            .offset(0)
            .lateral("match")
        )
        rows = await conn.execute(select(*match.c).select_from(probe).join(match, true()))
        return [ValueRow(*r) for r in rows]
    found: list[ValueRow] = []
    for start in range(0, len(blind_indexes), 500):
        rows = await conn.execute(
            select(*VALUE_COLUMNS).where(
                values.c.field == field,
                values.c.blind_index.in_(blind_indexes[start : start + 500]),
                values.c.is_current.is_(True),
            )
        )
        found.extend(ValueRow(*r) for r in rows)
    return found


# The columns of a new citizen row, in the order ``insert_citizens`` writes them.
_CITIZEN_INSERT_COLUMNS = ("id", "status", "version", "registered_by", "created_at", "updated_at")
# The columns of a new value row, in the order of the tuples ``writes.encrypted_rows`` makes.
VALUE_INSERT_COLUMNS = (
    "citizen_id",
    "field",
    "version",
    "owner",
    "data_key_id",
    "ciphertext",
    "blind_index",
    "blind_index_version",
    "is_current",
    "written_by",
    "written_at",
)


async def insert_citizens(
    conn: AsyncConnection,
    citizen_ids: Sequence[str],
    registered_by: str,
    now: datetime,
    deceased: Collection[str] = (),
) -> None:
    """New citizens, active but for those in ``deceased`` (registered with a date of death)."""
    rows = [
        (citizen_id, "deceased" if citizen_id in deceased else "active", 1, registered_by, now, now)
        for citizen_id in citizen_ids
    ]
    await bulk.insert_rows(conn, citizens, _CITIZEN_INSERT_COLUMNS, rows)


async def insert_values(conn: AsyncConnection, rows: Sequence[tuple[object, ...]]) -> None:
    """Value rows (tuples in ``VALUE_INSERT_COLUMNS`` order, as ``writes.encrypted_rows``
    builds them), by the driver's bulk path."""
    await bulk.insert_rows(conn, values, VALUE_INSERT_COLUMNS, rows)


async def bump_version(
    conn: AsyncConnection,
    citizen_id: str,
    *,
    expected: Collection[int] | None,
    now: datetime,
    status: str | None = None,
) -> CitizenRow | None:
    """Increment the record version (taking the row's write lock), if it is one of
    ``expected`` (None: any); None if absent or stale."""
    changes: dict[str, object] = {"version": citizens.c.version + 1, "updated_at": now}
    if status is not None:
        changes["status"] = status
    statement = update(citizens).where(citizens.c.id == citizen_id, citizens.c.status != "erased")
    if expected is not None:
        statement = statement.where(citizens.c.version.in_(sorted(expected)))
    row = (
        await conn.execute(
            statement.values(**changes).returning(citizens.c.id, citizens.c.status, citizens.c.version)
        )
    ).first()
    return CitizenRow(row.id, row.status, row.version) if row else None


async def retire_current(conn: AsyncConnection, citizen_id: str, field: str) -> int:
    """Mark the current value of a field as history; the new value's version follows it."""
    latest = (
        await conn.execute(
            select(func.max(values.c.version)).where(
                values.c.citizen_id == citizen_id, values.c.field == field
            )
        )
    ).scalar_one_or_none()
    await conn.execute(
        update(values)
        .where(values.c.citizen_id == citizen_id, values.c.field == field, values.c.is_current.is_(True))
        .values(is_current=False)
    )
    return int(latest or 0)


async def bump_versions(
    conn: AsyncConnection, changes: Sequence[tuple[str, str | None]], now: datetime
) -> dict[str, CitizenRow]:
    """``bump_version`` for many citizens, each (id, new status or None), in one
    executemany; the rows after it. An erased citizen is left as it is and not returned."""
    if not changes:
        return {}
    await conn.execute(
        update(citizens)
        .where(citizens.c.id == bindparam("b_id"), citizens.c.status != "erased")
        .values(
            version=citizens.c.version + 1,
            updated_at=now,
            status=func.coalesce(bindparam("b_status", type_=String()), citizens.c.status),
        ),
        [{"b_id": citizen_id, "b_status": status} for citizen_id, status in changes],
    )
    bumped = await get_citizens(conn, [citizen_id for citizen_id, _status in changes])
    return {citizen_id: row for citizen_id, row in bumped.items() if row.status != "erased"}


async def retire_current_many(
    conn: AsyncConnection, pairs: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    """``retire_current`` for many (citizen, field) pairs: each current value becomes
    history; the latest version of each pair (0 if none), which the new value follows."""
    if not pairs:
        return {}
    latest: dict[tuple[str, str], int] = dict.fromkeys(pairs, 0)
    ids = sorted({citizen_id for citizen_id, _field in pairs})
    names = sorted({field for _citizen, field in pairs})
    for start in range(0, len(ids), 500):
        rows = await conn.execute(
            select(values.c.citizen_id, values.c.field, func.max(values.c.version))
            .where(values.c.citizen_id.in_(ids[start : start + 500]), values.c.field.in_(names))
            .group_by(values.c.citizen_id, values.c.field)
        )
        for citizen_id, field, version in rows:
            if (citizen_id, field) in latest:
                latest[citizen_id, field] = int(version)
    await conn.execute(
        update(values)
        .where(
            values.c.citizen_id == bindparam("b_citizen"),
            values.c.field == bindparam("b_field"),
            values.c.is_current.is_(True),
        )
        .values(is_current=False),
        [{"b_citizen": citizen_id, "b_field": field} for citizen_id, field in pairs],
    )
    return latest


async def mark_erased(
    conn: AsyncConnection, citizen_id: str, now: datetime, *, expected: Collection[int] | None = None
) -> bool:
    """Mark the citizen erased and drop its blind indexes, if its version is one of
    ``expected`` (None: any); False (nothing changed) if it was erased already or stale."""
    statement = update(citizens).where(citizens.c.id == citizen_id, citizens.c.status != "erased")
    if expected is not None:
        statement = statement.where(citizens.c.version.in_(sorted(expected)))
    result = await conn.execute(
        statement.values(status="erased", erased_at=now, updated_at=now, version=citizens.c.version + 1)
    )
    if not result.rowcount:
        return False
    # Blind indexes go too: with the index key, they would confirm a guessed national id.
    await conn.execute(update(values).where(values.c.citizen_id == citizen_id).values(blind_index=None))
    return True


@dataclass(frozen=True)
class KeyedRow:
    id: int
    citizen_id: str
    field: str
    version: int
    data_key_id: int
    ciphertext: bytes


@dataclass(frozen=True)
class IndexedRow(KeyedRow):
    blind_index: bytes


# The columns that re-keying and re-indexing need: a row's identity and its ciphertext.
_KEYED_COLUMNS = (
    values.c.id,
    values.c.citizen_id,
    values.c.field,
    values.c.version,
    values.c.data_key_id,
    values.c.ciphertext,
)


async def stale_blind_indexes(
    conn: AsyncConnection, *, below_version: int, after_id: int, limit: int
) -> list[IndexedRow]:
    """Value rows whose blind index was computed with an older normalisation, by id."""
    rows = await conn.execute(
        select(*_KEYED_COLUMNS, values.c.blind_index)
        .where(
            values.c.blind_index.is_not(None),
            values.c.blind_index_version < below_version,
            values.c.id > after_id,
        )
        .order_by(values.c.id)
        .limit(limit)
    )
    return [IndexedRow(*r) for r in rows]


async def values_under_data_keys(conn: AsyncConnection, key_ids: Sequence[int]) -> list[KeyedRow]:
    """Every value row (current or history) encrypted under one of ``key_ids``."""
    rows = await conn.execute(select(*_KEYED_COLUMNS).where(values.c.data_key_id.in_(key_ids)))
    return [KeyedRow(*r) for r in rows]


async def rebind(conn: AsyncConnection, changes: Sequence[tuple[int, int, int, bytes]]) -> None:
    """Give value rows a new data key and ciphertext: (row id, old key id, new key id,
    ciphertext) each, applied only while the row is still under the old key."""
    await conn.execute(
        update(values)
        .where(values.c.id == bindparam("b_id"), values.c.data_key_id == bindparam("b_old_key"))
        .values(ciphertext=bindparam("b_ciphertext"), data_key_id=bindparam("b_new_key")),
        [
            {"b_id": row_id, "b_old_key": old, "b_new_key": new, "b_ciphertext": ciphertext}
            for row_id, old, new, ciphertext in changes
        ],
    )


async def set_blind_index(conn: AsyncConnection, value_id: int, blind_index: bytes, version: int) -> None:
    await conn.execute(
        update(values)
        .where(values.c.id == value_id)
        .values(blind_index=blind_index, blind_index_version=version)
    )


async def shared_blind_indexes(conn: AsyncConnection, field: str) -> list[list[str]]:
    """Citizens that share a current blind index of ``field``, one group per index."""
    shared = (
        select(values.c.blind_index)
        .where(values.c.field == field, values.c.is_current.is_(True), values.c.blind_index.is_not(None))
        .group_by(values.c.blind_index)
        .having(func.count(func.distinct(values.c.citizen_id)) > 1)
    )
    rows = await conn.execute(
        select(values.c.blind_index, values.c.citizen_id)
        .where(values.c.field == field, values.c.is_current.is_(True), values.c.blind_index.in_(shared))
        .order_by(values.c.blind_index, values.c.citizen_id)
    )
    groups: dict[bytes, list[str]] = {}
    for index, citizen_id in rows:
        groups.setdefault(index, []).append(citizen_id)
    return list(groups.values())


async def add_verify_comparisons(
    conn: AsyncConnection, *, consumer: str, citizen_id: str, field: str, day: date, comparisons: int
) -> int:
    """Add ``comparisons`` to today's count for (consumer, citizen, field); the new total.

    One atomic upsert, so concurrent requests in any process count exactly. It holds the
    row until the transaction ends: a transaction counting several fields counts them in
    one order (``claims.count_open_claims``)."""
    upsert = postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = upsert(probes).values(
        consumer=consumer, citizen_id=citizen_id, field=field, day=day, comparisons=comparisons
    )
    counted = statement.on_conflict_do_update(
        index_elements=[probes.c.consumer, probes.c.citizen_id, probes.c.field, probes.c.day],
        set_={"comparisons": probes.c.comparisons + comparisons},
    ).returning(probes.c.comparisons)
    return int((await conn.execute(counted)).scalar_one())


async def prune_verify_comparisons(conn: AsyncConnection, *, before: date) -> None:
    """Delete the counts of the days before ``before``: they limit nothing any more."""
    await conn.execute(delete(probes).where(probes.c.day < before))
