"""Every query on witnesses' cosignatures and on which checkpoints reached the quorum."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, insert, select, tuple_

from service.audit.models import AuditCheckpoint, AuditCosignature, AuditWitnessedCheckpoint
from service.audit.repository import Executor
from service.witness.cosignature import Cosignature, CosignatureVerifier, split_note, verified_cosignatures


@dataclass(frozen=True)
class CheckpointRow:
    id: int
    tree_size: int
    root_hash: bytes
    note: str
    created_at: datetime


def _checkpoint(row: Sequence[object]) -> CheckpointRow:
    cid, size, root, note, created = row
    return CheckpointRow(int(cid), int(size), bytes(root), str(note), created)  # type: ignore[call-overload,arg-type]


_CHECKPOINT_COLUMNS = (
    AuditCheckpoint.id,
    AuditCheckpoint.tree_size,
    AuditCheckpoint.root_hash,
    AuditCheckpoint.note,
    AuditCheckpoint.created_at,
)


async def newest_checkpoint(db: Executor) -> CheckpointRow | None:
    statement = select(*_CHECKPOINT_COLUMNS).order_by(
        AuditCheckpoint.tree_size.desc(), AuditCheckpoint.id.desc()
    )
    row = (await db.execute(statement.limit(1))).first()
    return None if row is None else _checkpoint(tuple(row))


async def first_checkpoint_time(db: Executor) -> datetime | None:
    found = (await db.execute(select(func.min(AuditCheckpoint.created_at)))).scalar()
    return _aware(found)


def _aware(value: datetime | None) -> datetime | None:
    # func.min bypasses the column type on SQLite, which then returns text or naive times.
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


async def cosignatures_for(db: Executor, checkpoint_id: int) -> dict[str, str]:
    """Witness name -> its cosignature line on the checkpoint."""
    statement = select(AuditCosignature.witness, AuditCosignature.line).where(
        AuditCosignature.checkpoint_id == checkpoint_id
    )
    return {str(w): str(line) for w, line in await db.execute(statement)}


async def all_cosignatures(db: Executor) -> dict[int, dict[str, str]]:
    """Checkpoint id -> witness name -> cosignature line, for export."""
    found: dict[int, dict[str, str]] = {}
    statement = select(AuditCosignature.checkpoint_id, AuditCosignature.witness, AuditCosignature.line)
    for cid, witness, line in await db.execute(statement):
        found.setdefault(int(cid), {})[str(witness)] = str(line)
    return found


async def last_cosigned_size(db: Executor, witness: str) -> int | None:
    """The largest checkpoint size ``witness`` has cosigned, as far as this log knows."""
    statement = (
        select(func.max(AuditCheckpoint.tree_size))
        .join(AuditCosignature, AuditCosignature.checkpoint_id == AuditCheckpoint.id)
        .where(AuditCosignature.witness == witness)
    )
    found = (await db.execute(statement)).scalar()
    return None if found is None else int(found)


async def store_cosignatures(db: Executor, checkpoint_id: int, cosignatures: Iterable[Cosignature]) -> None:
    """Keep each witness's freshest cosignature on the checkpoint (a refresh replaces it)."""
    rows = [
        {
            "checkpoint_id": checkpoint_id,
            "witness": c.witness,
            "line": c.line,
            "cosigned_at": datetime.fromtimestamp(c.timestamp, UTC),
        }
        for c in cosignatures
    ]
    if not rows:
        return
    await db.execute(
        delete(AuditCosignature).where(
            AuditCosignature.checkpoint_id == checkpoint_id,
            AuditCosignature.witness.in_([row["witness"] for row in rows]),
        )
    )
    await db.execute(insert(AuditCosignature), rows)


async def mark_witnessed(db: Executor, checkpoint: CheckpointRow, at: datetime) -> None:
    await db.execute(
        delete(AuditWitnessedCheckpoint).where(AuditWitnessedCheckpoint.checkpoint_id == checkpoint.id)
    )
    await db.execute(
        insert(AuditWitnessedCheckpoint).values(
            checkpoint_id=checkpoint.id, tree_size=checkpoint.tree_size, witnessed_at=at
        )
    )


async def witnessed_at(db: Executor, checkpoint_id: int) -> datetime | None:
    statement = select(AuditWitnessedCheckpoint.witnessed_at).where(
        AuditWitnessedCheckpoint.checkpoint_id == checkpoint_id
    )
    return _aware((await db.execute(statement)).scalar())


async def newest_witnessed(
    db: Executor, witnesses: Sequence[CosignatureVerifier] | None = None, quorum: int = 0
) -> tuple[CheckpointRow, datetime] | None:
    """The largest checkpoint that reached the quorum, and when it last did (our clock).

    The witnessed table records when a checkpoint reached the quorum of the witnesses
    configured at the time. Given ``witnesses`` (those configured now), a checkpoint
    counts only if at least ``quorum`` of them have a stored cosignature on it that their
    key verifies now: a witness since removed, or one whose key has changed, no longer
    counts. Without ``witnesses``, the table as recorded.
    """
    statement = select(*_CHECKPOINT_COLUMNS, AuditWitnessedCheckpoint.witnessed_at).join(
        AuditWitnessedCheckpoint, AuditWitnessedCheckpoint.checkpoint_id == AuditCheckpoint.id
    )
    order = (AuditWitnessedCheckpoint.tree_size.desc(), AuditCheckpoint.id.desc())
    if witnesses is None:
        row = (await db.execute(statement.order_by(*order).limit(1))).first()
        return None if row is None else _witnessed(tuple(row))
    names = [w.name for w in witnesses]
    # Counted by name in SQL first, so only checkpoints that may be at quorum are read and
    # their cosignatures verified; pages walk down from the largest.
    named = (
        select(func.count())
        .select_from(AuditCosignature)
        .where(AuditCosignature.checkpoint_id == AuditCheckpoint.id, AuditCosignature.witness.in_(names))
        .scalar_subquery()
    )
    candidates = statement.where(named >= quorum).order_by(*order).limit(_PAGE)
    after: tuple[int, int] | None = None
    while True:
        page = candidates
        if after is not None:
            page = page.where(tuple_(AuditWitnessedCheckpoint.tree_size, AuditCheckpoint.id) < after)
        rows = [_witnessed(tuple(row)) for row in await db.execute(page)]
        if not rows:
            return None
        lines = await _cosignature_lines(db, [checkpoint.id for checkpoint, _at in rows], names)
        for checkpoint, at in rows:
            body, _lines = split_note(checkpoint.note)
            if len(verified_cosignatures(body, lines.get(checkpoint.id, {}), witnesses)) >= quorum:
                return checkpoint, at
        last = rows[-1][0]
        after = (last.tree_size, last.id)


async def newest_witnessed_time(
    db: Executor, witnesses: Sequence[CosignatureVerifier], quorum: int
) -> datetime | None:
    """When the newest checkpoint at quorum of ``witnesses`` (see ``newest_witnessed``)
    last reached it: the freshest witnessing, since only the newest checkpoint is ever
    submitted to the witnesses and marked."""
    found = await newest_witnessed(db, witnesses, quorum)
    return None if found is None else found[1]


# Witnessed checkpoints read at a time while looking for one still at quorum.
_PAGE = 16


def _witnessed(values: tuple[object, ...]) -> tuple[CheckpointRow, datetime]:
    checkpoint = _checkpoint(values[:5])
    return checkpoint, _aware(values[5]) or checkpoint.created_at  # type: ignore[arg-type]


async def _cosignature_lines(
    db: Executor, checkpoint_ids: Sequence[int], witnesses: Sequence[str]
) -> dict[int, dict[str, str]]:
    """Checkpoint id -> witness name -> cosignature line, for those checkpoints and witnesses."""
    statement = select(AuditCosignature.checkpoint_id, AuditCosignature.witness, AuditCosignature.line).where(
        AuditCosignature.checkpoint_id.in_(checkpoint_ids), AuditCosignature.witness.in_(witnesses)
    )
    found: dict[int, dict[str, str]] = {}
    for cid, witness, line in await db.execute(statement):
        found.setdefault(int(cid), {})[str(witness)] = str(line)
    return found
