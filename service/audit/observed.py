"""The largest checkpoint an auditor has verified, kept apart from the audit tables.

``verify_for_auditor`` checks the log against it: an operator who truncates or empties
the log, dropping the checkpoints that signed the removed entries, cannot make the log
reach a size and root an auditor has already seen. The console's "verify now" runs it. The
record lives in ``auditor_observed_checkpoints``, which the audit writer and sequencer
never touch.

It trusts the keys it is given as ``tellonce audit verify`` trusts several ``--key``: each
checkpoint is held to the key the log records in force at its size, and each key given
must have signed some of them (``LogVerifier.finish``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import insert, select

from service.audit.checkpoint_keys import KeyRange, ReplacedKey, replaced_keys_missing
from service.audit.models import AuditorObservedCheckpoint
from service.audit.repository import Connect
from service.audit.service import recorded_key_changes, stored_log_verification
from service.audit.verify import (
    Expectations,
    NoTrustedSignature,
    StoredCheckpoint,
    TrustedKeys,
    VerificationFailed,
    trusted_keys,
)
from service.db import utcnow


@dataclass(frozen=True)
class AuditorVerification:
    size: int
    checkpoints: int
    anchored_at: int | None  # the size an auditor had seen before this run, if any
    key_ranges: tuple[KeyRange, ...] = ()  # which key verified which checkpoints
    unrecorded_key_switches: tuple[str, ...] = ()  # switches of key the log does not record


class ReplacedKeysNotGiven(VerificationFailed):
    """A checkpoint carries no signature by the keys given, and the log records that the
    key which signed it was replaced: ``replaced`` are the replaced keys not given (the
    message is the failure as the check found it)."""

    def __init__(self, message: str, replaced: list[ReplacedKey]) -> None:
        super().__init__(message)
        self.replaced = replaced


async def verify_for_auditor(
    connect: Connect,
    begin: Connect,
    verifier: TrustedKeys,
    auditor: str,
    progress: Callable[[int, int], None] | None = None,
) -> AuditorVerification:
    """Verify the whole log, requiring it to reach the largest checkpoint any auditor has
    verified before (and, as the CLI does, refusing an empty or unsigned log); then
    remember the largest checkpoint verified now. ``connect`` reads (e.g.
    ``engine.connect``), ``begin`` writes that record (e.g. ``engine.begin``). ``verifier``
    is the trusted key, or keys after a change of checkpoint key. Raises
    ``VerificationFailed`` as ``verify_stored_log`` does; ``ReplacedKeysNotGiven`` where a
    checkpoint fails because the log records its key as replaced and that key is not
    among the keys given."""
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
    try:
        log = await stored_log_verification(connect, verifier, progress, Expectations(trusted=trusted))
    except NoTrustedSignature as failure:
        changes = await recorded_key_changes(connect)
        replaced = replaced_keys_missing(changes, trusted_keys(verifier), failure.tree_size)
        if not replaced:
            raise
        raise ReplacedKeysNotGiven(str(failure), replaced) from None
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
    return AuditorVerification(
        size,
        checkpoints,
        None if row is None else int(row[0]),
        tuple(log.key_ranges),
        tuple(log.unrecorded_key_switches),
    )
