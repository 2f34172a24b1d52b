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

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from service.audit import merkle
from service.audit.checkpoint import CheckpointError, NoteVerifier
from service.audit.schemas import canonical_json
from service.audit.writer import FILTER_COLUMNS, filter_values, sqlite_time_text

_sha256 = hashlib.sha256
_SORT_KEYS = orjson.OPT_SORT_KEYS


def quick_parse(text: str | bytes) -> Any:
    """The JSON value of ``text``, by orjson (several times faster than ``json`` on a whole
    log), or by ``json`` for what orjson refuses (NaN, an escaped lone surrogate).

    Not always ``json.loads``'s value: orjson reads an integer beyond 64 bits as a float.
    ``LogVerifier`` therefore never trusts it alone: where the bytes an entry hashes do
    not come back from it, ``json`` reads the entry again and decides.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _fast_canonical(record: dict[str, Any]) -> bytes:
    """Usually the canonical bytes of ``record``, by orjson with sorted keys (which writes no
    whitespace and UTF-8 unescaped, as ``canonical_json`` does).

    A guess, never a rule: ``canonical_json`` is the contract, and every caller that finds
    these bytes do not match falls back to it. Where orjson cannot write a value at all
    (an integer beyond 64 bits), the contract's own bytes are returned.
    """
    try:
        return orjson.dumps(record, option=_SORT_KEYS)
    except orjson.JSONEncodeError:
        return canonical_json(record).encode()


def _has_float(values: Iterable[Any]) -> bool:
    for value in values:
        kind = type(value)
        if kind is float:
            return True
        if (kind is dict and _has_float(value.values())) or (kind is list and _has_float(value)):
            return True
    return False


def canonical_record(canonical: str, data: bytes) -> dict[str, Any] | None:
    """The entry ``canonical`` (``data``: its UTF-8 bytes) holds, or ``None`` when it is JSON
    but not an object in canonical form; ``ValueError`` when it is not JSON.

    The contract's canonical form is ``canonical_json``'s (the standard library's
    encoder). orjson parses and re-encodes several times faster, and for an entry without
    floats its sorted compact output is byte for byte the same
    (``tests/audit/test_verify_fast.py`` holds it to that over generated entries).
    Whatever orjson cannot settle (an entry holding a float, which is also how orjson
    reads integers beyond 64 bits; text it refuses; a mismatch) is decided by the
    standard library, so the answer is always the standard library's.
    """
    try:
        record = orjson.loads(data)
    except orjson.JSONDecodeError:
        record = None
    else:
        if (
            type(record) is dict
            and not _has_float(record.values())
            and orjson.dumps(record, option=_SORT_KEYS) == data
        ):
            return record
    record = json.loads(canonical)
    if type(record) is not dict or canonical_json(record) != canonical:
        return None
    return record


def _label(entry: object) -> str:
    """An entry as messages name it: a label as given, or ``entry ID``."""
    return entry if isinstance(entry, str) else f"entry {entry}"


class VerificationFailed(Exception):
    """The log does not verify; the message names the first entry or checkpoint at fault."""


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


def column_difference(record: Mapping[str, Any], stored: Sequence[Any]) -> str | None:
    """The first filter column whose stored value (``FILTER_COLUMNS`` order) is not what
    the entry says, if any. ``time`` is compared as SQLite's exact text when stored as
    text (text filters compare it so), else as an instant."""
    if _columns_match(record, stored):
        return None
    try:
        derived = filter_values(record)
    except (KeyError, TypeError, ValueError):
        return "canonical"
    if isinstance(stored[0], str):
        derived = (sqlite_time_text(derived[0]), *derived[1:])
    if derived == tuple(stored):
        return None
    for column, value, expected in zip(FILTER_COLUMNS, stored, derived, strict=True):
        if value != expected:
            return column
    return None


_fromisoformat = datetime.fromisoformat


def _comma_wrapped(names: Any) -> str:
    """``writer``'s comma-wrapped list (sorted, unique), raising where it raises."""
    if type(names) is list and len(names) == 1:
        name: str = names[0]  # a TypeError below if it is not a string, as in ``writer``
        return "," + name + ","  # one name: sorted and unique already
    unique = sorted(set(names))
    return "," + ",".join(unique) + "," if unique else ""


def _columns_match(record: Mapping[str, Any], stored: Sequence[Any]) -> bool:
    """True only where ``filter_values`` would derive exactly ``stored`` (as
    ``column_difference`` compares them), by a cheaper path; False means undecided, and
    ``column_difference`` decides the usual way.

    The saving is ``time`` on SQLite, stored as text: instead of converting the entry's
    instant to UTC and formatting it, the stored text is read back. Text of exactly the
    shape ``sqlite_time_text`` writes ("YYYY-MM-DD HH:MM:SS.ffffff": 26 characters, these
    separators, and ``fromisoformat`` takes only ASCII digits between them) is the one text
    of its instant, so equal instants mean equal text.
    ``tests/audit/test_verify_fast.py`` holds it to ``column_difference``'s answers.
    """
    try:
        time, client_id, department, citizen_id, action, decision, purpose, owners, fields = stored
        if not (
            record["client_id"] == client_id
            and record["department"] == department
            and record["citizen_id"] == citizen_id
            and record["action"] == action
            and record["decision"] == decision
            and record["purpose"] == purpose
            and _comma_wrapped(record["owners"]) == owners
            and _comma_wrapped([*record["fields_requested"], *record["fields_released"]]) == fields
        ):
            return False
        instant = _fromisoformat(record["time"])
        if instant.tzinfo is None:
            instant = instant.replace(tzinfo=UTC)
        if type(time) is str:
            if len(time) != 26 or time[4:20:3] != "-- ::.":
                return False
            time = _fromisoformat(time).replace(tzinfo=UTC)
        return bool(instant == time)
    except (KeyError, TypeError, ValueError):
        return False


def check_leaves(
    rows: Sequence[Sequence[Any]], expected: int, *, keep: bool = False
) -> tuple[list[bytes], list[dict[str, Any]], VerificationFailed | None]:
    """Check stored leaves in order, each row ``(leaf index, entry label or id, canonical
    JSON, recorded leaf hash, *stored filter columns)`` (no columns: nothing to compare),
    the first expected at leaf ``expected``: each is canonical JSON whose leaf hash is the
    recorded one and whose stored columns are the entry's own. One parse of each entry
    serves every check.

    Returns the leaf hashes of the leaves before the first problem, their entries (with
    ``keep``: holding them costs time where nobody reads them) and that problem, if any.
    The tree is the caller's: ``LogVerifier`` in this process, or the parent of the
    processes that check pages of a log in parallel (``verify_pages``).
    """
    leaves: list[bytes] = []
    records: list[dict[str, Any]] = []
    sha256 = _sha256
    for leaf_index, entry, canonical, recorded, *columns in rows:
        if leaf_index != expected:
            return (
                leaves,
                records,
                VerificationFailed(f"leaf {expected} is missing (next stored leaf is {leaf_index})"),
            )
        if canonical is None:
            return (
                leaves,
                records,
                VerificationFailed(f"{_label(entry)} at leaf {leaf_index} has been deleted"),
            )
        data = canonical.encode()
        try:
            record = canonical_record(canonical, data)
        except ValueError:
            return leaves, records, VerificationFailed(f"{_label(entry)} at leaf {leaf_index} is not JSON")
        if record is None:
            return (
                leaves,
                records,
                VerificationFailed(f"{_label(entry)} at leaf {leaf_index} is not in canonical form"),
            )
        digest = sha256(b"\x00" + data).digest()
        if recorded is not None and recorded != digest:
            return (
                leaves,
                records,
                VerificationFailed(f"{_label(entry)} at leaf {leaf_index} no longer matches its leaf hash"),
            )
        if columns and not _columns_match(record, columns):
            changed = column_difference(record, columns)
            if changed is not None:
                return (
                    leaves,
                    records,
                    VerificationFailed(
                        f"{_label(entry)} at leaf {leaf_index}: the stored column {changed!r} differs "
                        "from the signed entry; queries filtering on it give wrong answers"
                    ),
                )
        leaves.append(digest)
        if keep:
            records.append(record)
        expected += 1
    return leaves, records, None


@dataclass
class LogVerifier:
    verifier: NoteVerifier
    checkpoints: list[StoredCheckpoint]
    expectations: Expectations = field(default_factory=Expectations)
    compact: merkle.CompactRange = field(default_factory=merkle.CompactRange)
    checked_checkpoints: int = 0
    # The largest checkpoint whose root this verification recomputed and matched.
    newest_checked: StoredCheckpoint | None = None
    _last_good_size: int = 0

    def __post_init__(self) -> None:
        self.own_checkpoints = len(self.checkpoints)
        self.checkpoints = sorted([*self.checkpoints, *self.expectations.trusted], key=lambda c: c.tree_size)
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

    def add_leaves(self, first: int, leaves: Sequence[bytes]) -> None:
        """Feed leaf hashes that ``check_leaves`` computed elsewhere (another process) on
        stored rows whose first is leaf ``first``: the tree grows to each checkpoint among
        them and checks it, so problems are found in log order, as ``add_rows`` finds them.
        Call it for every page that holds a row, even one with no good leaf: a leaf
        missing before ``first`` comes first."""
        if first != self.compact.size:
            raise VerificationFailed(f"leaf {self.compact.size} is missing (next stored leaf is {first})")
        position = 0
        while position < len(leaves):
            end = len(leaves)
            if self._next < len(self.checkpoints):
                end = min(end, position + max(1, self.checkpoints[self._next].tree_size - self.compact.size))
            self._grow(leaves[position:end])
            position = end

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
        digest = _sha256(b"\x00" + _fast_canonical(record)).digest()
        if recorded is not None and digest != recorded:
            # The contract's reading and bytes decide: a mismatch is never orjson's alone.
            if exact is not None:
                record = exact()
                if not isinstance(record, dict):
                    raise VerificationFailed(f"{entry_label} at leaf {leaf_index} has been deleted")
            digest = _sha256(b"\x00" + canonical_json(record).encode()).digest()
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
                if self.compact.root() != checkpoint.root_hash:
                    raise VerificationFailed(
                        f"{checkpoint.label}: the root of leaves {self._last_good_size}.."
                        f"{checkpoint.tree_size - 1} does not match; an entry in that range was changed"
                    )
                self._last_good_size = checkpoint.tree_size
                self.checked_checkpoints += 1
                self.newest_checked = checkpoint
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
        return size
