"""The largest checkpoint an auditor has verified, kept apart from the audit tables.

``verify_for_auditor`` checks the log against it: an operator who truncates or empties
the log, dropping the checkpoints that signed the removed entries, cannot make the log
reach a size and root an auditor has already seen. The console's "verify now" runs it. The
record lives in ``auditor_observed_checkpoints``, which the audit writer and sequencer
never touch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import insert, select

from service.audit.checkpoint import NoteVerifier
from service.audit.models import AuditorObservedCheckpoint
from service.audit.repository import Connect
from service.audit.service import stored_log_verification
from service.audit.verify import Expectations, StoredCheckpoint
from service.db import utcnow


@dataclass(frozen=True)
class AuditorVerification:
    size: int
    checkpoints: int
    anchored_at: int | None  # the size an auditor had seen before this run, if any


async def verify_for_auditor(
    connect: Connect,
    begin: Connect,
    verifier: NoteVerifier,
    auditor: str,
    progress: Callable[[int, int], None] | None = None,
) -> AuditorVerification:
    """Verify the whole log, requiring it to reach the largest checkpoint any auditor has
    verified before (and, as the CLI does, refusing an empty or unsigned log); then
    remember the largest checkpoint verified now. ``connect`` reads (e.g.
    ``engine.connect``), ``begin`` writes that record (e.g. ``engine.begin``). Raises
    ``VerificationFailed`` as ``verify_stored_log`` does."""
    async with connect() as conn:
        row = (
            await conn.execute(
                select(
                    AuditorObservedCheckpoint.tree_size,
                    AuditorObservedCheckpoint.root_hash,
                    AuditorObservedCheckpoint.note,
                    AuditorObservedCheckpoint.observed_at,
                )
                .order_by(AuditorObservedCheckpoint.tree_size.desc())
                .limit(1)
            )
        ).first()
    trusted: tuple[StoredCheckpoint, ...] = ()
    if row is not None:
        size, root, note, at = row
        label = f"the checkpoint of size {size} an auditor verified on {at:%Y-%m-%d %H:%M} UTC"
        trusted = (StoredCheckpoint(int(size), bytes(root), str(note), label),)
    log = await stored_log_verification(connect, verifier, progress, Expectations(trusted=trusted))
    size, checkpoints = log.finish(), log.checked_checkpoints
    # The largest checkpoint this run matched against the recomputed tree: the sequencer
    # may have signed a larger one meanwhile, which the next verification checks.
    newest = log.newest_checked
    if newest is not None and (row is None or newest.tree_size > row[0]):
        async with begin() as conn:
            await conn.execute(
                insert(AuditorObservedCheckpoint).values(
                    tree_size=newest.tree_size,
                    root_hash=newest.root_hash,
                    note=newest.note,
                    observed_by=auditor,
                    observed_at=utcnow(),
                )
            )
    return AuditorVerification(size, checkpoints, None if row is None else int(row[0]))
