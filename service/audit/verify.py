"""Whole-log verification: recompute every leaf and the tree, check every checkpoint.

Used by ``tellonce audit verify`` against the database and against an exported bundle.
Leaves are fed in order; the first problem raises ``VerificationFailed`` naming the
entry (or checkpoint) at fault.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from service.audit import merkle
from service.audit.checkpoint import CheckpointError, NoteVerifier
from service.audit.schemas import canonical_json


class VerificationFailed(Exception):
    """The log does not verify; the message names the first entry or checkpoint at fault."""


@dataclass
class StoredCheckpoint:
    tree_size: int
    root_hash: bytes
    note: str
    label: str


@dataclass
class LogVerifier:
    verifier: NoteVerifier
    checkpoints: list[StoredCheckpoint]
    compact: merkle.CompactRange = field(default_factory=merkle.CompactRange)
    checked_checkpoints: int = 0
    _last_good_size: int = 0

    def __post_init__(self) -> None:
        self.checkpoints = sorted(self.checkpoints, key=lambda c: c.tree_size)
        self._next = 0
        # Signatures first: a forged checkpoint is named even before its size is reached.
        for checkpoint in self.checkpoints:
            try:
                opened = self.verifier.open_checkpoint(checkpoint.note)
            except CheckpointError as exc:
                raise VerificationFailed(f"{checkpoint.label}: {exc}") from None
            if opened.origin != self.verifier.name:
                raise VerificationFailed(f"{checkpoint.label}: origin {opened.origin!r} is not this log's")
            if opened.size != checkpoint.tree_size or opened.root_hash != checkpoint.root_hash:
                raise VerificationFailed(
                    f"{checkpoint.label}: the stored size or root differs from the signed note"
                )
        self._check_reached()

    def add(
        self,
        leaf_index: int,
        entry_label: str,
        canonical: str | None,
        recorded: bytes | None,
        *,
        made_canonical: bool = False,
    ) -> None:
        """Feed the next leaf: its canonical JSON, and the leaf hash recorded when sequenced.

        ``made_canonical`` says the caller produced ``canonical`` with ``canonical_json``
        from the parsed entry (a bundle), so it needs no second parse to prove its form.
        """
        if leaf_index != self.compact.size:
            raise VerificationFailed(
                f"leaf {self.compact.size} is missing (next stored leaf is {leaf_index})"
            )
        if canonical is None:
            raise VerificationFailed(f"{entry_label} at leaf {leaf_index} has been deleted")
        try:
            if not made_canonical and canonical_json(json.loads(canonical)) != canonical:
                raise VerificationFailed(f"{entry_label} at leaf {leaf_index} is not in canonical form")
        except ValueError:
            raise VerificationFailed(f"{entry_label} at leaf {leaf_index} is not JSON") from None
        digest = merkle.leaf_hash(canonical.encode())
        if recorded is not None and recorded != digest:
            raise VerificationFailed(f"{entry_label} at leaf {leaf_index} no longer matches its leaf hash")
        self.compact.append(digest)
        self._check_reached()

    def _check_reached(self) -> None:
        while (
            self._next < len(self.checkpoints) and self.checkpoints[self._next].tree_size <= self.compact.size
        ):
            checkpoint = self.checkpoints[self._next]
            if checkpoint.tree_size == self.compact.size:
                if self.compact.root() != checkpoint.root_hash:
                    raise VerificationFailed(
                        f"{checkpoint.label}: the root of leaves {self._last_good_size}.."
                        f"{checkpoint.tree_size - 1} does not match; an entry in that range was changed"
                    )
                self._last_good_size = checkpoint.tree_size
                self.checked_checkpoints += 1
            self._next += 1

    def finish(self) -> int:
        """After the last leaf: every checkpoint must have been reached. Returns the tree size."""
        if self._next < len(self.checkpoints):
            checkpoint = self.checkpoints[self._next]
            raise VerificationFailed(
                f"{checkpoint.label} signs size {checkpoint.tree_size} but the log holds only "
                f"{self.compact.size} leaves: entries were removed"
            )
        return self.compact.size
