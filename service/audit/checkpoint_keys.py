"""Which key signed which checkpoints: the log's record of a checkpoint-key change, and
the rule ``tellonce audit verify`` applies to it.

Pure: no I/O. When the audit checkpoint key is lost and ``tellonce init
--new-checkpoint-key`` makes another, init appends a ``key-operation`` entry whose
``document`` names the key it replaced (``<name>+<hex key id>``, as the stored
checkpoints' signature lines name it: the lost key's public key may be known to no one
but its auditors), the new verifier key, and the size of the last checkpoint the old key
signed. The tree goes on; only the signer changes.

A verifier given the keys it trusts then holds every checkpoint to the key in force at
its size: the old key up to that size, the new one after it. A checkpoint signed after a
change by the old key, or before it by the new one, fails, and so does a key the log never
put in force, or a change that puts a replaced key back in force. A log that records no
change (one written before this record existed) may be signed by any of the trusted keys,
each over one run of checkpoints: a switch between them is reported, not refused, but a
key that signs again after another followed it fails, as it would after a recorded change.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.audit.checkpoint import CheckpointError, NoteVerifier
from service.audit.entries import operator_entry
from service.audit.leaf_checks import VerificationFailed
from service.audit.schemas import AuditEntry, canonical_json

# The document's one member: what marks a key-operation entry as a checkpoint-key change.
_CHANGE = "checkpoint_key_change"


@dataclass(frozen=True)
class KeyChange:
    """A checkpoint-key change as the entry at ``leaf_index`` records it."""

    leaf_index: int
    old_key: str  # <name>+<hex key id>
    new_key: str  # the new verifier key (vkey)
    signed_up_to: int  # the size of the last checkpoint the old key signed


@dataclass(frozen=True)
class KeyRange:
    """Consecutive checkpoints (by size) that one key verified."""

    key: str  # <name>+<hex key id>
    first_size: int
    last_size: int
    checkpoints: int


def key_change_entry(actor: str, what: str, old_key: str, new_key: str, signed_up_to: int) -> AuditEntry:
    """The entry ``tellonce init --new-checkpoint-key`` appends: ``what`` in its reason, the
    change in its document."""
    entry = operator_entry(actor, "key-operation", "", what)
    document = {_CHANGE: {"old_key": old_key, "new_key": new_key, "signed_up_to": signed_up_to}}
    return entry.model_copy(update={"document": canonical_json(document)})


def key_change(leaf_index: int, entry: Mapping[str, Any]) -> KeyChange | None:
    """The checkpoint-key change the verified ``entry`` at ``leaf_index`` records, or None
    if it records none. An entry that claims one but does not say it fully, or that a
    department made (an operator's command makes it), fails: it was signed into the log, so
    it is the log's word and must be read."""
    if entry.get("action") != "key-operation" or not isinstance(entry.get("document"), str):
        return None
    try:
        document = json.loads(entry["document"])
    except ValueError:
        return None
    if not isinstance(document, dict) or _CHANGE not in document:
        return None
    change = document[_CHANGE]
    where = f"the checkpoint-key change at leaf {leaf_index}"
    if entry.get("department") != "":
        # No department's key operation carries one: it is a forgery, refused alike live and offline.
        raise VerificationFailed(
            f"{where} was made by department {entry.get('department')!r}: only an operator's command "
            "changes the checkpoint key"
        )
    if not isinstance(change, dict):
        raise VerificationFailed(f"{where} is not an object")
    old_key, new_key, size = change.get("old_key"), change.get("new_key"), change.get("signed_up_to")
    if not isinstance(old_key, str) or not isinstance(new_key, str):
        raise VerificationFailed(f"{where} does not name its old and new keys")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise VerificationFailed(f"{where} does not give the size its old key signed up to")
    try:
        NoteVerifier.parse(new_key)
    except CheckpointError as exc:
        raise VerificationFailed(f"{where}: {exc}") from None
    return KeyChange(leaf_index, old_key, new_key, size)


def _check_changes(changes: Sequence[KeyChange]) -> None:
    """The changes must follow one another: each replaces the key the one before put in
    force, after a checkpoint no smaller, and is logged after the checkpoint it names. A
    key once replaced stays so: a key is replaced because it was lost, and may have leaked,
    so no later change puts it back in force."""
    replaced: dict[str, int] = {}  # key -> the leaf of the change that replaced it
    for number, change in enumerate(changes):
        replaced.setdefault(change.old_key, change.leaf_index)
        new_key = NoteVerifier.parse(change.new_key).label()
        if new_key in replaced:
            raise VerificationFailed(
                f"the checkpoint-key change at leaf {change.leaf_index} puts {new_key} back in force, "
                f"which the checkpoint-key change at leaf {replaced[new_key]} replaced"
            )
        if change.leaf_index < change.signed_up_to:
            raise VerificationFailed(
                f"the checkpoint-key change at leaf {change.leaf_index} says the old key signed up to "
                f"size {change.signed_up_to}, past the change itself"
            )
        if number == 0:
            continue
        before = changes[number - 1]
        in_force = NoteVerifier.parse(before.new_key).label()
        if change.old_key != in_force:
            raise VerificationFailed(
                f"the checkpoint-key change at leaf {change.leaf_index} replaces {change.old_key}, but the "
                f"change at leaf {before.leaf_index} put {in_force} in force"
            )
        if change.signed_up_to < before.signed_up_to:
            raise VerificationFailed(
                f"the checkpoint-key change at leaf {change.leaf_index} says the old key signed up to "
                f"size {change.signed_up_to}, before the change at leaf {before.leaf_index} "
                f"(size {before.signed_up_to})"
            )


def _signed(signers: Sequence[NoteVerifier]) -> str:
    return ", ".join(key.label() for key in signers)


def assign_keys(
    checkpoints: Sequence[tuple[int, str]],
    signers: Sequence[Sequence[NoteVerifier]],
    changes: Sequence[KeyChange],
) -> tuple[list[KeyRange], list[str]]:
    """Hold each checkpoint (size, label; in size order) to the key in force at its size;
    ``signers`` are the trusted keys whose signature each one carries (at least one).

    Returns the ranges of checkpoints each key verified, and a line for each switch of key
    that the log does not record (only where it records no change at all); raises
    ``VerificationFailed`` naming the first checkpoint signed by a key not in force, or, in
    a log that records no change, by a key that signs again after another followed it."""
    changes = sorted(changes, key=lambda change: change.leaf_index)
    _check_changes(changes)
    sizes = [change.signed_up_to for change in changes]
    new_keys = [NoteVerifier.parse(change.new_key).label() for change in changes]
    ranges: list[KeyRange] = []
    unrecorded: list[str] = []
    for (size, label), signed in zip(checkpoints, signers, strict=True):
        # How many changes came before this checkpoint: its size is past their old keys'.
        segment = bisect_left(sizes, size)
        if segment:
            change = changes[segment - 1]
            required: str | None = new_keys[segment - 1]
            refused = (
                f"{label} is signed by {_signed(signed)}, not by {required}, which the checkpoint-key "
                f"change at leaf {change.leaf_index} put in force after size {change.signed_up_to}"
            )
        elif changes:
            change = changes[0]
            required = change.old_key
            refused = (
                f"{label} is signed by {_signed(signed)}, not by {required}, which signed every "
                f"checkpoint up to size {change.signed_up_to} (the checkpoint-key change at leaf "
                f"{change.leaf_index})"
            )
        else:
            required = None
        labels = [key.label() for key in signed]
        if required is not None:
            if required not in labels:
                raise VerificationFailed(refused)
            key = required
        else:
            previous = ranges[-1].key if ranges else None
            # A key another followed does not sign again: a recorded change refuses that too.
            followed = {earlier.key for earlier in ranges[:-1]}
            fresh = [candidate for candidate in labels if candidate not in followed]
            if previous in labels:
                key = previous
            elif fresh:
                key = fresh[0]
            else:
                last = ranges[-1]
                raise VerificationFailed(
                    f"{label} is signed by {_signed(signed)} again, after {last.key} signed the "
                    f"checkpoints of size {last.first_size} to {last.last_size}: the log records no "
                    "change of checkpoint key, and a key that another followed signs no more"
                )
            if previous is not None and key != previous:
                unrecorded.append(
                    f"{label} is signed by {key}, the checkpoints before it by {previous}: the log "
                    "records no change of checkpoint key"
                )
        if ranges and ranges[-1].key == key:
            last = ranges[-1]
            ranges[-1] = KeyRange(key, last.first_size, size, last.checkpoints + 1)
        else:
            ranges.append(KeyRange(key, size, size, 1))
    return ranges, unrecorded


def key_range_lines(ranges: Sequence[KeyRange]) -> list[str]:
    """One line per run of checkpoints (by size) that one key verified, as ``tellonce audit
    verify`` prints them after its verdict and the console's "verify now" shows them."""
    return [
        f"checkpoints of size {run.first_size} to {run.last_size} ({run.checkpoints}): "
        f"verified with {run.key}"
        for run in ranges
    ]


@dataclass(frozen=True)
class ReplacedKey:
    """A key the log records as replaced, and the checkpoints it signed: those of a size
    after ``after_size`` (0 for the log's first key) up to ``up_to_size``."""

    key: str  # <name>+<hex key id>
    after_size: int
    up_to_size: int
    leaf_index: int  # of the change that replaced it


def replaced_keys_missing(
    changes: Sequence[KeyChange], keys: Sequence[NoteVerifier], tree_size: int | None
) -> list[ReplacedKey]:
    """Why a checkpoint of ``tree_size`` carried no signature by any of ``keys``, if the
    log's record of key changes says why: the key in force at that size is one the changes
    replaced, and ``keys`` do not hold it. Then every replaced key that ``keys`` do not hold,
    in the order the changes replaced them (the keys a verification needs besides these);
    else (or with no size) nothing. The changes are the log's word, unverified here: this
    explains a failure, it never lets a log pass."""
    if tree_size is None:
        return []
    changes = sorted(changes, key=lambda change: change.leaf_index)
    given = {key.label() for key in keys}
    missing: list[ReplacedKey] = []
    in_force: str | None = None
    after = 0
    for change in changes:
        if in_force is None and tree_size <= change.signed_up_to:
            in_force = change.old_key
        if change.old_key not in given:
            missing.append(ReplacedKey(change.old_key, after, change.signed_up_to, change.leaf_index))
        after = change.signed_up_to
    if in_force is None or in_force in given:
        return []
    return missing
