"""Every audit query: tree nodes, leaves, checkpoints, and filtered entry pages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Literal

import asyncpg
from sqlalchemy import JSON, ColumnElement, Text, and_, cast, func, or_, select, text, true
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from service.audit import merkle
from service.audit.models import (
    AuditCheckpoint,
    AuditEntryRow,
    AuditLeaf,
    AuditNode,
    AuditSequencerState,
)
from service.audit.writer import FILTER_COLUMNS
from service.records import public as records_public

Executor = AsyncConnection | AsyncSession
# Opens a connection to read with, e.g. ``engine.connect``; each use is one short read.
Connect = Callable[[], AbstractAsyncContextManager[AsyncConnection]]


async def read_nodes(db: Executor, keys: Iterable[merkle.NodeKey]) -> dict[merkle.NodeKey, bytes]:
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    found: dict[merkle.NodeKey, bytes] = {}
    # Chunked: each key is one (level, index) pair in the OR list.
    for start in range(0, len(wanted), 200):
        chunk = wanted[start : start + 200]
        condition = or_(*(and_(AuditNode.level == lvl, AuditNode.index == idx) for lvl, idx in chunk))
        rows = await db.execute(select(AuditNode.level, AuditNode.index, AuditNode.hash).where(condition))
        for level, index, node in rows:
            found[(int(level), int(index))] = bytes(node)
    return found


async def tree_size(db: Executor) -> int:
    size = (
        await db.execute(select(AuditSequencerState.tree_size).where(AuditSequencerState.id == 1))
    ).scalar()
    return int(size or 0)


async def stored_leaf_count(db: Executor) -> int:
    """How many leaf rows the database holds: what bounds a verification's pages, whatever
    tree size the sequencer's row claims."""
    return int((await db.execute(select(func.count()).select_from(AuditLeaf))).scalar() or 0)


async def latest_checkpoint(db: Executor) -> AuditCheckpoint | None:
    statement = select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size.desc(), AuditCheckpoint.id.desc())
    if isinstance(db, AsyncSession):
        return (await db.execute(statement.limit(1))).scalars().first()
    row = (await db.execute(statement.limit(1))).first()
    return AuditCheckpoint(**row._mapping) if row else None


async def entry_at_leaf(db: Executor, leaf_index: int) -> dict[str, Any] | None:
    statement = (
        select(AuditEntryRow.canonical)
        .join(AuditLeaf, AuditLeaf.entry_id == AuditEntryRow.id)
        .where(AuditLeaf.leaf_index == leaf_index)
    )
    canonical = (await db.execute(statement)).scalar()
    if canonical is None:
        return None
    record: dict[str, Any] = json.loads(canonical)
    return record


def listing(column: ColumnElement[str] | InstrumentedAttribute[str], name: str) -> ColumnElement[bool]:
    """``column`` (a comma-wrapped list, ``,dvla,welfare,``) names ``name``: whole names
    only, LIKE's wildcards in ``name`` escaped."""
    escaped = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(f"%,{escaped},%", escape="\\")


class EntryFilter:
    """What an auditor asked for; ``visible_to_owner`` scopes a data owner to its fields."""

    def __init__(
        self,
        *,
        citizen_id: str | None = None,
        consumer: str | None = None,
        owner: str | None = None,
        field: str | None = None,
        purpose: str | None = None,
        decision: str | None = None,
        action: str | None = None,
        actions: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        visible_to_owner: str | None = None,
    ) -> None:
        self.citizen_id = citizen_id
        self.consumer = consumer
        self.owner = owner
        self.field = field
        self.purpose = purpose
        self.decision = decision
        self.action = action
        self.actions = actions
        self.since = since
        self.until = until
        self.visible_to_owner = visible_to_owner

    def conditions(self) -> list[ColumnElement[bool]]:
        entries = AuditEntryRow
        found: list[ColumnElement[bool]] = []
        equal = {
            entries.citizen_id: self.citizen_id,
            entries.department: self.consumer,
            entries.purpose: self.purpose,
            entries.decision: self.decision,
            entries.action: self.action,
        }
        for column, value in equal.items():
            if value is not None:
                found.append(column == value)
        for column, value in (
            (entries.owners, self.owner),
            (entries.owners, self.visible_to_owner),
            (entries.fields, self.field),
        ):
            if value is not None:
                found.append(listing(column, value))
        if self.actions is not None:
            found.append(entries.action.in_(list(self.actions)))
        if self.since is not None:
            found.append(entries.time >= self.since)
        if self.until is not None:
            found.append(entries.time < self.until)
        return found


async def released_counts(
    db: AsyncConnection, entry_filter: EntryFilter, period: Literal["day", "month"]
) -> list[tuple[str, str | None, str, str, int]]:
    """How many entries matching ``entry_filter`` released each field: (department,
    purpose, period, field, count), the period being the UTC day (``2026-11-29``) or
    month (``2026-11``) of the entry's time, the column ``since`` and ``until`` filter on.

    The database groups the matching entries in one pass and reads each one's
    ``fields_released`` with its own JSON functions, so what comes back is a row per group,
    not per entry. SQLite unnests the lists (``json_each``). PostgreSQL groups by the list
    as it is written, which is quicker there than unnesting, and the few distinct lists
    are split here.
    """
    entries = AuditEntryRow
    if db.dialect.name == "sqlite":
        released = func.json_each(entries.canonical, "$.fields_released").table_valued("value")
        # The column holds UTC as "YYYY-MM-DD HH:MM:SS.ffffff" (``writer.sqlite_time_text``).
        when = func.substr(entries.time, 1, 10 if period == "day" else 7).label("usage_period")
        unnested = (
            select(
                entries.department,
                entries.purpose,
                when,
                released.c.value.label("released_field"),
                func.count(),
            )
            .select_from(entries)
            .join(released, true())
            .where(*entry_filter.conditions())
            # By the labels: one expression grouped and shown, whatever its parameters.
            .group_by(entries.department, entries.purpose, "usage_period", "released_field")
        )
        return [
            (str(department), purpose, str(day), str(name), int(count))
            for department, purpose, day, name, count in await db.execute(unnested)
        ]
    # ``json``, not ``jsonb``: its input keeps the text as it is and accepts every escape
    # an entry may hold; only ``fields_released`` is read from it.
    listed = cast(cast(entries.canonical, JSON)["fields_released"], Text).label("released_list")
    pattern = "YYYY-MM-DD" if period == "day" else "YYYY-MM"
    when = func.to_char(func.timezone("UTC", entries.time), pattern).label("usage_period")
    statement = (
        select(entries.department, entries.purpose, when, listed, func.count())
        .where(*entry_filter.conditions())
        .group_by(entries.department, entries.purpose, "usage_period", "released_list")
    )
    counts: Counter[tuple[str, str | None, str, str]] = Counter()
    for department, purpose, day, names, count in await db.execute(statement):
        for name in json.loads(names):
            counts[str(department), purpose, str(day), str(name)] += int(count)
    return [(*group, count) for group, count in counts.items()]


async def page_entries(
    db: Executor, entry_filter: EntryFilter, after_id: int, limit: int, *, newest_first: bool = False
) -> list[tuple[int, int | None, str]]:
    """(entry id, leaf index or None if not yet sequenced, canonical JSON), in id order, or
    newest first; ``after_id`` is the last id of the previous page (0: the first page)."""
    if newest_first:
        position = [AuditEntryRow.id < after_id] if after_id else []
        order = AuditEntryRow.id.desc()
    else:
        position = [AuditEntryRow.id > after_id]
        order = AuditEntryRow.id.asc()
    statement = (
        select(AuditEntryRow.id, AuditLeaf.leaf_index, AuditEntryRow.canonical)
        .outerjoin(AuditLeaf, AuditLeaf.entry_id == AuditEntryRow.id)
        .where(*position, *entry_filter.conditions())
        .order_by(order)
        .limit(limit)
    )
    return [
        (int(entry_id), None if leaf is None else int(leaf), str(canonical))
        for entry_id, leaf, canonical in await db.execute(statement)
    ]


# Below every leaf index: the first page of a verification has no lower bound.
FIRST_LEAF = -(2**63)


def _verification_rows(first: str, below: str, *, page: bool = False) -> str:
    """The rows verification checks, in leaf order, from leaf ``first`` to ``below``
    (exclusive), the bounds written as the driver's placeholders.

    ``page``: PostgreSQL's form for a page of leaves. Its planner, given the whole log's
    statistics (or none), joins a page's rows by scanning every entry or every level-0
    node of the log, for each page; here each leaf's entry is looked up by its id
    (``LATERAL ... LIMIT 1`` keeps it a lookup) and the nodes are bounded by the page too,
    so a page costs its own rows whatever the statistics say.
    """
    entries = (
        "LEFT JOIN LATERAL (SELECT * FROM audit_entries WHERE id = l.entry_id LIMIT 1) e ON true"
        if page
        else "LEFT JOIN audit_entries e ON e.id = l.entry_id"
    )
    nodes = f' AND n."index" >= {first} AND n."index" < {below}' if page else ""
    return (
        "SELECT l.leaf_index, l.entry_id, e.canonical, n.hash, "  # noqa: S608 - fixed column names
        + ", ".join(f"e.{column}" for column in FILTER_COLUMNS)
        + f" FROM audit_leaves l {entries}"
        + f' LEFT JOIN audit_nodes n ON n.level = 0 AND n."index" = l.leaf_index{nodes}'
        + f" WHERE l.leaf_index >= {first} AND l.leaf_index < {below} ORDER BY l.leaf_index"
    )


# A plain text statement: its rows come back as the driver gives them, without
# SQLAlchemy's per-value result processing, which costs more than verifying an entry.
_VERIFY_ROWS = text(_verification_rows(":first", ":below"))
# The same query for the drivers themselves, as the processes that verify pages in
# parallel run it (``verify_pages``): sqlite3 takes named parameters, asyncpg numbered ones.
SQLITE_VERIFY_PAGE = _verification_rows(":first", ":below")
POSTGRES_VERIFY_PAGE = _verification_rows("$1", "$2", page=True)


async def stream_for_verification(
    conn: AsyncConnection, below: int, page: int
) -> AsyncGenerator[Sequence[Sequence[Any]], None]:
    """Every leaf below ``below`` in order, in pages of ``page`` rows from one streamed
    query (a server-side cursor on PostgreSQL), each row (leaf index, entry id, canonical
    JSON or None if the entry is gone, recorded leaf hash or None, then the stored filter
    columns in ``FILTER_COLUMNS`` order as the driver returns them: ``time`` is text on
    SQLite).

    The next page is read while the caller works on this one. Iterate it under
    ``contextlib.aclosing``: a caller that stops early then waits here for that read to
    end before its connection closes.
    """
    result = await conn.stream(
        _VERIFY_ROWS, {"first": FIRST_LEAF, "below": below}, execution_options={"yield_per": page}
    )
    pages = result.partitions(page).__aiter__()
    pending = asyncio.ensure_future(anext(pages, None))
    try:
        while (rows := await pending) is not None:
            pending = asyncio.ensure_future(anext(pages, None))
            await asyncio.sleep(0)  # the read starts before the caller's work holds the loop
            yield rows
    finally:
        if not pending.done():
            with contextlib.suppress(Exception):
                await pending


def sqlite_leaf_page(conn: sqlite3.Connection, first: int, below: int) -> list[Any]:
    """``stream_for_verification``'s rows from leaf ``first`` to ``below``, by sqlite3."""
    return conn.execute(SQLITE_VERIFY_PAGE, {"first": first, "below": below}).fetchall()


async def postgres_leaf_page(conn: asyncpg.Connection, first: int, below: int) -> list[Any]:
    """``stream_for_verification``'s rows from leaf ``first`` to ``below``, by asyncpg."""
    return list(await conn.fetch(POSTGRES_VERIFY_PAGE, first, below))


async def node_range(db: Executor, level: int, first: int, count: int) -> list[bytes]:
    """The stored subtree hashes at ``level`` numbered ``first`` .. ``first + count - 1``, in order."""
    statement = (
        select(AuditNode.hash)
        .where(AuditNode.level == level, AuditNode.index >= first, AuditNode.index < first + count)
        .order_by(AuditNode.index)
    )
    return [bytes(h) for h in (await db.execute(statement)).scalars()]


async def canonical_range(db: Executor, first: int, count: int) -> list[str]:
    """The canonical JSON of leaves ``first`` .. ``first + count - 1``, in leaf order."""
    statement = (
        select(AuditEntryRow.canonical)
        .join(AuditLeaf, AuditLeaf.entry_id == AuditEntryRow.id)
        .where(AuditLeaf.leaf_index >= first, AuditLeaf.leaf_index < first + count)
        .order_by(AuditLeaf.leaf_index)
    )
    return [str(c) for c in (await db.execute(statement)).scalars()]


async def all_checkpoints(db: Executor) -> list[tuple[int, int, bytes, str]]:
    statement = select(
        AuditCheckpoint.id, AuditCheckpoint.tree_size, AuditCheckpoint.root_hash, AuditCheckpoint.note
    ).order_by(AuditCheckpoint.id)
    return [(int(i), int(s), bytes(r), str(n)) for i, s, r, n in await db.execute(statement)]


async def key_operations(db: Executor, below: int) -> list[tuple[int, str, bytes | None]]:
    """(leaf index, canonical JSON, recorded leaf hash) of every sequenced key operation
    below leaf ``below``, in leaf order: those that may record a change of checkpoint key
    (``audit.checkpoint_keys.key_change`` decides which do, and refuses one a department
    made). The column filtered on is derived again from the entry by ``audit verify``, so
    an entry cannot leave this answer unnoticed."""
    statement = (
        select(AuditLeaf.leaf_index, AuditEntryRow.canonical, AuditNode.hash)
        .join(AuditEntryRow, AuditEntryRow.id == AuditLeaf.entry_id)
        .outerjoin(AuditNode, and_(AuditNode.level == 0, AuditNode.index == AuditLeaf.leaf_index))
        .where(AuditEntryRow.action == "key-operation", AuditLeaf.leaf_index < below)
        .order_by(AuditLeaf.leaf_index)
    )
    return [
        (int(leaf), str(canonical), None if recorded is None else bytes(recorded))
        for leaf, canonical, recorded in await db.execute(statement)
    ]


async def citizen_exists(db: Executor, citizen_id: str) -> bool:
    """Whether the register knows ``citizen_id`` (asked of records, which owns the table)."""
    return citizen_id in await records_public.citizen_statuses(db, [citizen_id])


async def unsequenced_entry(db: Executor) -> int | None:
    """An entry the sequencer passed (id <= its watermark) that has no leaf, if any."""
    watermark = select(AuditSequencerState.last_entry_id).where(AuditSequencerState.id == 1).scalar_subquery()
    statement = (
        select(AuditEntryRow.id)
        .outerjoin(AuditLeaf, AuditLeaf.entry_id == AuditEntryRow.id)
        .where(AuditEntryRow.id <= watermark, AuditLeaf.leaf_index.is_(None))
        .order_by(AuditEntryRow.id)
        .limit(1)
    )
    found = (await db.execute(statement)).scalar()
    return None if found is None else int(found)


async def sequencer_lag(db: Executor) -> int:
    """Entries written after the sequencer's watermark: not yet in the tree (a metric)."""
    watermark = select(AuditSequencerState.last_entry_id).where(AuditSequencerState.id == 1).scalar_subquery()
    statement = (
        select(func.count()).select_from(AuditEntryRow).where(AuditEntryRow.id > func.coalesce(watermark, 0))
    )
    return int((await db.execute(statement)).scalar_one())


async def sequenced_watermark(db: Executor) -> int:
    """The id of the last entry the sequencer has put in the tree."""
    statement = select(AuditSequencerState.last_entry_id).where(AuditSequencerState.id == 1)
    return int((await db.execute(statement)).scalar() or 0)


async def sequenced_releases(
    db: Executor, after_id: int, up_to_id: int, actions: Sequence[str], limit: int
) -> list[tuple[int, str]]:
    """(entry id, canonical JSON) of sequenced entries in ``(after_id, up_to_id]`` whose
    action is one of ``actions`` and that released something, in id (commit) order."""
    statement = (
        select(AuditEntryRow.id, AuditEntryRow.canonical)
        .where(
            AuditEntryRow.id > after_id,
            AuditEntryRow.id <= up_to_id,
            AuditEntryRow.action.in_(list(actions)),
            AuditEntryRow.decision.in_(["permit", "partial"]),
        )
        .order_by(AuditEntryRow.id)
        .limit(limit)
    )
    return [(int(entry_id), str(canonical)) for entry_id, canonical in await db.execute(statement)]
