"""The checks of one stored leaf, as whole-log verification runs them on every leaf:
its entry is JSON in canonical form, its leaf hash is the one recorded when it was
sequenced, and the filter columns stored beside it are the entry's own.

Pure and quick: the verifier runs them in one process (``LogVerifier.add_rows``) or in
worker processes a page at a time (``verify_pages``), and the tree and checkpoints are
the caller's. Each quick path here decides exactly as the plain rule does
(``tests/audit/test_verify_fast.py``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

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


def fast_canonical(record: dict[str, Any]) -> bytes:
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
        if kind is str:  # most of an entry: one test each
            continue
        if kind is float or (kind is dict and _has_float(value.values())):
            return True
        if kind is list:
            # An entry's lists hold strings: their items are looked at here, without a call.
            for item in value:
                kind = type(item)
                if kind is str:
                    continue
                if kind is float or (kind is dict and _has_float(item.values())):
                    return True
                if kind is list and _has_float(item):
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


def column_difference(record: Mapping[str, Any], stored: Sequence[Any]) -> str | None:
    """The first filter column whose stored value (``FILTER_COLUMNS`` order) is not what
    the entry says, if any. ``time`` is compared as SQLite's exact text when stored as
    text (text filters compare it so), else as an instant. A quick comparison answers
    when every column matches; anything else is decided by ``derived_column_difference``."""
    if _columns_match(record, stored):
        return None
    return derived_column_difference(record, stored)


def derived_column_difference(record: Mapping[str, Any], stored: Sequence[Any]) -> str | None:
    """The rule itself: derive every filter column from the entry, then compare."""
    try:
        derived = filter_values(record)
    except (KeyError, TypeError, ValueError):
        return "canonical"
    if isinstance(stored[0], str):
        derived = (sqlite_time_text(derived[0]), *derived[1:])
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


# The ``fields`` column of each (requested, released) pair seen, as a log repeats a few.
_FIELDS_SEEN: dict[tuple[Any, ...], str] = {}
_FIELDS_SEEN_MAX = 1024


def _fields_wrapped(requested: Any, released: Any) -> str:
    """``_comma_wrapped`` of the requested then released names, raising where it raises;
    the answer for names seen before is looked up (only strings are ever kept, and a
    tuple of strings equals only the same strings, so a hit is the same answer)."""
    try:
        key = (*requested, None, *released)
        return _FIELDS_SEEN[key]
    except (KeyError, TypeError):
        pass
    wrapped = _comma_wrapped([*requested, *released])
    if len(_FIELDS_SEEN) < _FIELDS_SEEN_MAX:
        try:
            _FIELDS_SEEN[(*requested, None, *released)] = wrapped
        except TypeError:
            pass  # a name that is not a string got this far: nothing kept
    return wrapped


def _columns_match(record: Mapping[str, Any], stored: Sequence[Any]) -> bool:
    """True only where ``filter_values`` would derive exactly ``stored`` (as
    ``column_difference`` compares them), by a cheaper path; False means undecided, and
    ``column_difference`` decides the usual way.

    The saving is ``time`` on SQLite, stored as text: instead of converting the entry's
    instant to UTC and formatting it, the stored text is read back. Text of exactly the
    shape ``sqlite_time_text`` writes ("YYYY-MM-DD HH:MM:SS.ffffff": 26 characters, these
    separators, and ``fromisoformat`` takes only ASCII digits between them) is the one text
    of its instant, so equal instants mean equal text. The entry's time as the service
    writes it, the same digits with "T" and "+00:00", is that instant when the text reads
    as a time at all, so then the one reading is enough.
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
            and _fields_wrapped(record["fields_requested"], record["fields_released"]) == fields
        ):
            return False
        moment = record["time"]
        if type(time) is str:
            if len(time) != 26 or time[4:20:3] != "-- ::.":
                return False
            if moment == time[:10] + "T" + time[11:] + "+00:00":
                _fromisoformat(time)  # a ValueError if it is no time
                return True
            time = _fromisoformat(time).replace(tzinfo=UTC)
        instant = _fromisoformat(moment)
        if instant.tzinfo is None:
            instant = instant.replace(tzinfo=UTC)
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
        digest = _sha256(b"\x00" + data).digest()
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
