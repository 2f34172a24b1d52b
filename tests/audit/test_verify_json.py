"""Whole-log verification reads entries with orjson for speed, but the audit's canonical JSON
(``json.dumps`` with sorted keys) stays the contract: every entry ``json`` reads and writes
canonically verifies, whatever orjson makes of it (integers beyond 64 bits, which orjson
reads as floats; floats it writes differently; NaN), and a changed entry never does."""

from __future__ import annotations

import base64
import json
import math
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from service.audit import merkle
from service.audit.checkpoint import Checkpoint, NoteSigner, NoteVerifier
from service.audit.cli import _exact_entry, verify_bundle
from service.audit.schemas import canonical_json
from service.audit.verify import Expectations, LogVerifier, VerificationFailed, quick_parse

SIGNER = NoteSigner("test.tellonce/audit", Ed25519PrivateKey.generate())
VERIFIER = NoteVerifier.parse(SIGNER.verifier_key())
# Values where orjson and json part ways, and ordinary ones.
AWKWARD: dict[str, Any] = {
    "big": 2**70,
    "negative_big": -(2**64),
    "small_float": 1e-07,
    "not_a_number": math.nan,
    "infinite": math.inf,
    "text": 'é \u2028 \x00 "quoted" \\',
    "nested": [{"b": 1, "a": [True, None, 0.5]}],
}


def leaf_hash(record: dict[str, Any]) -> bytes:
    return merkle.leaf_hash(canonical_json(record).encode())


Entries = list[dict[str, Any]]


def bundle_of(folder: Path, entries: Entries, hashed: Entries | None = None) -> Path:
    """A bundle as ``audit export`` writes one; ``hashed`` are the entries the log signed, if
    they differ from those written."""
    compact = merkle.CompactRange()
    lines = [json.dumps({"type": "bundle", "format": 2, "origin": SIGNER.name})]
    for index, (entry, signed) in enumerate(zip(entries, hashed or entries, strict=True)):
        digest = leaf_hash(signed)
        compact.append(digest)
        record = {
            "type": "entry",
            "leaf_index": index,
            "entry_id": index + 1,
            "leaf_hash": base64.b64encode(digest).decode(),
            "entry": entry,
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    root = compact.root()
    note = SIGNER.sign(Checkpoint(SIGNER.name, compact.size, root).body())
    lines.append(
        json.dumps(
            {
                "type": "checkpoint",
                "tree_size": compact.size,
                "root_hash": base64.b64encode(root).decode(),
                "note": note,
            }
        )
    )
    path = folder / "bundle.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def log() -> LogVerifier:
    return LogVerifier(VERIFIER, [], Expectations(allow_empty=True))


class TestBundles:
    def test_awkward_values_verify_and_are_handed_on_as_json_reads_them(self, tmp_path: Path) -> None:
        entries = [AWKWARD, {"plain": "entry"}]
        seen: list[dict[str, Any]] = []
        bundle = bundle_of(tmp_path, entries)
        size = verify_bundle(bundle, VERIFIER, on_entry=lambda _i, _l, e: seen.append(e))
        assert size == 2
        # orjson alone would read 2**70 as a float; the entry handed on is json's.
        assert type(seen[0]["big"]) is int
        assert [canonical_json(e) for e in seen] == [canonical_json(e) for e in entries]

    def test_a_changed_big_integer_is_caught(self, tmp_path: Path) -> None:
        changed = {**AWKWARD, "big": 2**70 + 1}
        with pytest.raises(VerificationFailed, match="entry 1 at leaf 0 no longer matches its leaf hash"):
            verify_bundle(bundle_of(tmp_path, [changed], hashed=[AWKWARD]), VERIFIER)


class TestMalformedBundles:
    """A bundle is outside input: a record missing a member, or holding one of another type,
    is a verdict naming its line (``VerificationFailed``), never an exception of Python's."""

    @pytest.mark.parametrize(
        ("record_type", "change", "complaint"),
        [
            ("entry", {"leaf_index": None}, "leaf_index is not a whole number"),
            ("entry", {"leaf_index": "x"}, "leaf_index is not a whole number"),
            ("entry", {"leaf_index": -1}, "leaf_index is not a whole number"),
            ("entry", {"leaf_index": True}, "leaf_index is not a whole number"),
            ("entry", {"leaf_hash": None}, "leaf_hash is missing or not a str"),
            ("entry", {"leaf_hash": 7}, "leaf_hash is missing or not a str"),
            ("checkpoint", {"tree_size": "big"}, "tree_size is not a whole number"),
            ("checkpoint", {"tree_size": None}, "tree_size is not a whole number"),
            ("checkpoint", {"root_hash": None}, "root_hash is missing or not a str"),
            ("checkpoint", {"note": ["x"]}, "note is missing or not a str"),
        ],
    )
    def test_a_member_missing_or_of_another_type_names_its_line(
        self, tmp_path: Path, record_type: str, change: dict[str, Any], complaint: str
    ) -> None:
        bundle = bundle_of(tmp_path, [{"plain": "entry"}])
        lines = bundle.read_text(encoding="utf-8").splitlines()
        number = next(n for n, line in enumerate(lines) if json.loads(line)["type"] == record_type)
        record = json.loads(lines[number])
        for name, value in change.items():
            if value is None:
                record.pop(name)
            else:
                record[name] = value
        lines[number] = json.dumps(record)
        bundle.write_text("\n".join(lines) + "\n", encoding="utf-8")
        with pytest.raises(VerificationFailed, match=f"{bundle}:{number + 1}: {complaint}"):
            verify_bundle(bundle, VERIFIER)

    def test_a_bare_typed_record_is_a_verdict(self, tmp_path: Path) -> None:
        bundle = bundle_of(tmp_path, [{"plain": "entry"}])
        with bundle.open("a", encoding="utf-8") as handle:
            handle.write('{"type": "entry"}\n')
        with pytest.raises(VerificationFailed, match=r":4: leaf_index is not a whole number"):
            verify_bundle(bundle, VERIFIER)


class TestStoredEntries:
    def test_awkward_canonical_text_verifies(self) -> None:
        verifier = log()
        text = canonical_json(AWKWARD)
        record = verifier.add(0, "entry 1", text, leaf_hash(AWKWARD))
        assert type(record["big"]) is int
        assert canonical_json(record) == text

    def test_text_not_in_canonical_form_is_refused(self) -> None:
        text = json.dumps(AWKWARD, sort_keys=True)  # with spaces
        with pytest.raises(VerificationFailed, match="not in canonical form"):
            log().add(0, "entry 1", text, None)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(entry=st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_every_canonical_entry_verifies_both_ways(entry: dict[str, Any]) -> None:
    text = canonical_json(entry)
    stored = log().add(0, "entry 1", text, leaf_hash(entry))
    assert canonical_json(stored) == text
    line = json.dumps({"type": "entry", "entry": entry}, ensure_ascii=False).encode()
    quick = quick_parse(line)["entry"]
    bundled = log().add_record(0, "entry 1", quick, leaf_hash(entry), exact=partial(_exact_entry, line))
    assert canonical_json(bundled) == text
