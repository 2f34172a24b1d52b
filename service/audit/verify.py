"""Whole-log verification: recompute every leaf and the tree, check every checkpoint,
and derive every filter column again from the entry it belongs to.

Used by ``tellonce audit verify`` against the database and against an exported bundle,
and by the console's "verify now". Leaves are fed in order; the first problem raises
``VerificationFailed`` naming the entry (or checkpoint) at fault. ``finish`` then
refuses a log that is shorter than any checkpoint it was shown, including checkpoints
trusted from outside (a file an auditor kept, the largest size any auditor has seen),
so a truncated or emptied log does not pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.audit import merkle
from service.audit.checkpoint import Checkpoint, CheckpointError, NoteVerifier, signing_keys
from service.audit.checkpoint_keys import KeyChange, KeyRange, assign_keys, key_change
from service.audit.leaf_checks import (
    VerificationFailed,
    check_leaves,
    column_difference,
    fast_canonical,
    quick_parse,
)
from service.audit.schemas import canonical_json

# Named here for the callers that verify a whole log.
__all__ = [
    "Expectations",
    "LogVerifier",
    "NoTrustedSignature",
    "StoredCheckpoint",
    "TrustedKeys",
    "VerificationFailed",
    "distinct_keys",
    "quick_parse",
]

# The verifier keys an auditor trusts for the log's checkpoints: one, or several when the
# checkpoint key changed (each checkpoint is then held to the key in force at its size).
TrustedKeys = NoteVerifier | Sequence[NoteVerifier]


def trusted_keys(keys: TrustedKeys) -> tuple[NoteVerifier, ...]:
    return (keys,) if isinstance(keys, NoteVerifier) else tuple(keys)


def distinct_keys(keys: Iterable[NoteVerifier]) -> list[NoteVerifier]:
    """``keys`` in the order given, each once: the trusted keys of one verification."""
    distinct: list[NoteVerifier] = []
    for key in keys:
        if key not in distinct:
            distinct.append(key)
    return distinct


class NoTrustedSignature(VerificationFailed):
    """A checkpoint carries no signature by any trusted key. ``tree_size`` is the size it
    is stored with (its note is not read, as nothing vouches for it), if known: the size at
    which a caller can find, in the log's record of key changes, which key signed it."""

    def __init__(self, message: str, tree_size: int | None = None) -> None:
        super().__init__(message)
        self.tree_size = tree_size


def open_checkpoint(
    note: str, keys: Sequence[NoteVerifier], label: str, tree_size: int | None = None
) -> tuple[Checkpoint, list[NoteVerifier]]:
    """The checkpoint ``note`` signs, and which of ``keys`` signed it (at least one, and its
    name the checkpoint's origin); ``VerificationFailed`` naming ``label`` otherwise
    (``NoTrustedSignature``, carrying ``tree_size``, when none of ``keys`` signed it)."""
    try:
        text, signed = signing_keys(note, keys)
        if not signed:
            raise NoTrustedSignature(
                f"{label}: the note carries no signature by a trusted key "
                f"({', '.join(key.label() for key in keys)})",
                tree_size,
            )
        opened = Checkpoint.parse_body(text)
    except CheckpointError as exc:
        raise VerificationFailed(f"{label}: {exc}") from None
    if opened.origin not in {key.name for key in signed}:
        raise VerificationFailed(f"{label}: origin {opened.origin!r} is not this log's")
    return opened, signed


@dataclass
class StoredCheckpoint:
    tree_size: int
    root_hash: bytes
    note: str
    label: str


@dataclass(frozen=True)
class Expectations:
    """What the log must hold beyond its own checkpoints.

    ``trusted`` are checkpoints kept outside the log (``--trusted-checkpoint``, the
    console's record of the largest checkpoint an auditor verified): the log must reach
    each one's size with the same root. ``min_size`` is a size the log must reach. An
    empty log, or one with no checkpoint, passes only with ``allow_empty``.
    """

    trusted: tuple[StoredCheckpoint, ...] = ()
    min_size: int = 0
    allow_empty: bool = False


@dataclass
class LogVerifier:
    """``verifier``: the trusted keys. ``key_changes``: the checkpoint-key changes the log
    records, when they are read apart from the leaves (``note_entry`` finds them among the
    leaves it is shown). ``finish`` holds each checkpoint to the key in force at its size
    and sets ``key_ranges`` (which key verified which checkpoints) and ``unrecorded_key_switches``;
    given several keys, it fails if one of them verified no checkpoint (when any did)."""

    verifier: TrustedKeys
    checkpoints: list[StoredCheckpoint]
    expectations: Expectations = field(default_factory=Expectations)
    key_changes: list[KeyChange] = field(default_factory=list)
    compact: merkle.CompactRange = field(default_factory=merkle.CompactRange)
    checked_checkpoints: int = 0
    # The largest checkpoint whose root this verification recomputed and matched.
    newest_checked: StoredCheckpoint | None = None
    _last_good_size: int = 0
    key_ranges: list[KeyRange] = field(default_factory=list)
    unrecorded_key_switches: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.own_checkpoints = len(self.checkpoints)
        self.checkpoints = sorted([*self.checkpoints, *self.expectations.trusted], key=lambda c: c.tree_size)
        self._next = 0
        keys = trusted_keys(self.verifier)
        self._signers: list[list[NoteVerifier]] = []
        # Signatures first: a forged checkpoint is named even before its size is reached.
        for checkpoint in self.checkpoints:
            opened, signed = open_checkpoint(checkpoint.note, keys, checkpoint.label, checkpoint.tree_size)
            self._signers.append(signed)
            if opened.size != checkpoint.tree_size or opened.root_hash != checkpoint.root_hash:
                raise VerificationFailed(
                    f"{checkpoint.label}: the stored size or root differs from the signed note"
                )
        self._check_reached()

    def note_entry(self, leaf_index: int, entry: dict[str, Any]) -> None:
        """Take note of a verified entry that records a checkpoint-key change, if it does."""
        change = key_change(leaf_index, entry)
        if change is not None:
            self.key_changes.append(change)

    def add(
        self,
        leaf_index: int,
        entry_label: str,
        canonical: str | None,
        recorded: bytes | None,
        columns: Sequence[Any] | None = None,
    ) -> dict[str, Any]:
        """Feed the next leaf as stored: its canonical JSON, the leaf hash recorded when it
        was sequenced, and the filter columns stored beside it in ``FILTER_COLUMNS`` order
        (None: nothing to compare). Returns the entry, parsed once for any further check."""
        row = (leaf_index, entry_label, canonical, recorded, *(columns or ()))
        return self.add_rows([row], keep=True)[0]

    def add_rows(self, rows: Sequence[Sequence[Any]], *, keep: bool = False) -> list[dict[str, Any]]:
        """Feed the next leaves in order, as ``check_leaves`` takes them, and return their
        parsed entries with ``keep`` (else nothing).

        The leaves are checked up to each checkpoint in the rows, then the tree is grown
        to it in one step and the checkpoint checked, so problems are found in log order.
        """
        records: list[dict[str, Any]] = []
        position = 0
        while position < len(rows):
            end = len(rows)
            if self._next < len(self.checkpoints):
                end = min(end, position + max(1, self.checkpoints[self._next].tree_size - self.compact.size))
            leaves, checked, failure = check_leaves(rows[position:end], self.compact.size, keep=keep)
            if failure is not None:
                raise failure
            self._grow(leaves)
            records += checked
            position = end
        return records

    def add_ranges(self, first: int, ranges: Sequence[tuple[int, Sequence[bytes]]]) -> None:
        """Feed leaves that ``check_leaves`` checked elsewhere (another process), on stored
        rows whose first is leaf ``first``, as compact ranges of those leaves alone
        (``merkle.CompactRange.followed_by``): ``ranges`` holds (leaf count, hashes) for the
        first leaves up to each checkpoint among them, then for all of them, in that
        order. The tree is set to each in turn and every checkpoint reached is checked, so
        problems are found in log order, as ``add_rows`` finds them. Call it for every
        page that holds a row, even one with no good leaf: a leaf missing before
        ``first`` comes first."""
        if first != self.compact.size:
            raise VerificationFailed(f"leaf {self.compact.size} is missing (next stored leaf is {first})")
        before = self.compact
        for count, hashes in ranges:
            self.compact = before.followed_by(count, hashes)
            self._check_reached()

    def _grow(self, leaves: Sequence[bytes]) -> None:
        self.compact.extend(leaves)
        if self._next < len(self.checkpoints) and self.checkpoints[self._next].tree_size <= self.compact.size:
            self._check_reached()

    def add_record(
        self,
        leaf_index: int,
        entry_label: str,
        record: Any,
        recorded: bytes | None,
        columns: Sequence[Any] | None = None,
        exact: Callable[[], Any] | None = None,
    ) -> dict[str, Any]:
        """Feed the next leaf as an exported bundle holds it: the entry as a JSON object read
        by ``quick_parse`` (its canonical bytes are derived here, so they need no check of
        their form), the recorded leaf hash and the stored filter columns, as for ``add``.
        ``exact`` gives the same entry as ``json.loads`` reads it, for when the quick
        reading does not hash as recorded. Returns the entry that was verified."""
        self._in_order(leaf_index)
        if not isinstance(record, dict):
            raise VerificationFailed(f"{entry_label} at leaf {leaf_index} has been deleted")
        digest = merkle.leaf_hash(fast_canonical(record))
        if recorded is not None and digest != recorded:
            # The contract's reading and bytes decide: a mismatch is never orjson's alone.
            if exact is not None:
                record = exact()
                if not isinstance(record, dict):
                    raise VerificationFailed(f"{entry_label} at leaf {leaf_index} has been deleted")
            digest = merkle.leaf_hash(canonical_json(record).encode())
        self._push(leaf_index, entry_label, record, digest, recorded, columns)
        return record

    def _in_order(self, leaf_index: int) -> None:
        if leaf_index != self.compact.size:
            raise VerificationFailed(
                f"leaf {self.compact.size} is missing (next stored leaf is {leaf_index})"
            )

    def _push(
        self,
        leaf_index: int,
        entry_label: str,
        record: dict[str, Any],
        digest: bytes,
        recorded: bytes | None,
        columns: Sequence[Any] | None,
    ) -> None:
        if recorded is not None and recorded != digest:
            raise VerificationFailed(f"{entry_label} at leaf {leaf_index} no longer matches its leaf hash")
        if columns is not None:
            changed = column_difference(record, columns)
            if changed is not None:
                raise VerificationFailed(
                    f"{entry_label} at leaf {leaf_index}: the stored column {changed!r} differs from the "
                    "signed entry; queries filtering on it give wrong answers"
                )
        self.compact.push(digest)
        if self._next < len(self.checkpoints) and self.checkpoints[self._next].tree_size <= self.compact.size:
            self._check_reached()

    def _check_reached(self) -> None:
        while (
            self._next < len(self.checkpoints) and self.checkpoints[self._next].tree_size <= self.compact.size
        ):
            checkpoint = self.checkpoints[self._next]
            if checkpoint.tree_size == self.compact.size:
                previous = self.newest_checked
                if previous is not None and previous.tree_size == checkpoint.tree_size:
                    if previous.root_hash != checkpoint.root_hash:
                        # The leaves were checked against the other one: a fork, not a changed entry.
                        raise VerificationFailed(
                            f"{checkpoint.label} and {previous.label} are both signed for size "
                            f"{checkpoint.tree_size} with different roots: the log forked"
                        )
                elif self.compact.root() != checkpoint.root_hash:
                    raise VerificationFailed(
                        f"{checkpoint.label}: the root of leaves {self._last_good_size}.."
                        f"{checkpoint.tree_size - 1} does not match; an entry in that range was changed"
                    )
                self._last_good_size = checkpoint.tree_size
                self.checked_checkpoints += 1
                self.newest_checked = checkpoint
            else:
                # Every path grows the tree to each checkpoint's size exactly; one passed
                # unchecked is a fault here, and the log must not pass for it.
                raise RuntimeError(f"{checkpoint.label} was passed without its root checked")
            self._next += 1

    def finish(self) -> int:
        """After the last leaf: every checkpoint must have been reached, and the log must
        meet the expectations. Returns the tree size."""
        size = self.compact.size
        if self._next < len(self.checkpoints):
            checkpoint = self.checkpoints[self._next]
            raise VerificationFailed(
                f"{checkpoint.label} signs size {checkpoint.tree_size} but the log holds only "
                f"{size} leaves: entries were removed"
            )
        if size < self.expectations.min_size:
            raise VerificationFailed(
                f"the log holds {size} leaves, fewer than the {self.expectations.min_size} required: "
                "entries were removed"
            )
        if not self.expectations.allow_empty:
            if size == 0:
                raise VerificationFailed("the log is empty (pass --allow-empty if that is expected)")
            if self.own_checkpoints == 0:
                raise VerificationFailed(
                    "the log holds no signed checkpoint, so nothing commits to its contents "
                    "(pass --allow-empty if that is expected)"
                )
        self.key_ranges, self.unrecorded_key_switches = assign_keys(
            [(checkpoint.tree_size, checkpoint.label) for checkpoint in self.checkpoints],
            self._signers,
            self.key_changes,
        )
        keys = trusted_keys(self.verifier)
        if len(keys) > 1 and self.key_ranges:
            # The log picks which of several keys signs where; each given key must have signed,
            # or a log signed wholly by one (an old key that leaked) would pass as the whole.
            used = {run.key for run in self.key_ranges}
            for key in keys:
                if key.label() not in used:
                    raise VerificationFailed(
                        f"{key.label()} verified no checkpoint: each key given must have signed some "
                        "of the log's checkpoints (give only the keys that signed it)"
                    )
        return size
