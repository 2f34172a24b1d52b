"""The verifier's fast paths decide exactly as the plain rules do.

- ``canonical_record`` (orjson first, the standard library for whatever orjson cannot
  settle) accepts a text as canonical exactly when the contract's rule does: parse with
  ``json`` and re-encode with ``canonical_json``.
- ``CompactRange.extend`` grows the tree as pushing one leaf at a time does, and so does
  ``CompactRange.followed_by`` from the compact range of the new leaves alone.
- ``LogVerifier.add_rows`` reports the same first problem as feeding leaves one by one,
  and so do pages checked apart (as worker processes check them, each sending compact
  ranges) and fed in order.
- The filter columns' quick comparison agrees with ``column_difference``'s plain one.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from service.audit import merkle
from service.audit.checkpoint import Checkpoint, NoteSigner, NoteVerifier
from service.audit.leaf_checks import (
    _columns_match,
    _comma_wrapped,
    _fields_wrapped,
    canonical_record,
    column_difference,
    derived_column_difference,
)
from service.audit.schemas import canonical_json
from service.audit.verify import LogVerifier, StoredCheckpoint, VerificationFailed
from service.audit.verify_pages import check_page, page_bounds, take_page
from service.audit.writer import filter_values, sqlite_time_text


def contract_rule(text: str) -> bool | None:
    """The rule as the contract states it: None when not JSON, else whether canonical."""
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return isinstance(record, dict) and canonical_json(record) == text


def fast_rule(text: str) -> bool | None:
    try:
        return canonical_record(text, text.encode()) is not None
    except ValueError:
        return None


# Every code point but the lone surrogates (text from the database is valid UTF-8).
characters = st.characters(codec="utf-8")
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1e16, 1e-7, 123456789012345678.0, -0.0, 0.1, 2.5e-300])
    | st.text(characters, max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(characters, max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
records = st.dictionaries(st.text(characters, max_size=8), values, max_size=8)


def renderings(record: dict[str, Any]) -> list[str]:
    """The canonical text and texts that differ from it in the ways a changed row could."""
    texts = [
        canonical_json(record),
        json.dumps(record, sort_keys=True),  # spaces, and non-ASCII escaped
        json.dumps(record, sort_keys=True, separators=(",", ":")),  # non-ASCII escaped
        json.dumps(record, separators=(",", ":"), ensure_ascii=False),  # keys as inserted
        json.dumps(dict(reversed(record.items())), separators=(",", ":"), ensure_ascii=False),
    ]
    try:
        texts.append(orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode())  # orjson's own floats
        texts.append(orjson.dumps(record).decode())
    except TypeError:
        pass  # integers beyond 64 bits
    return texts


class TestCanonicalForm:
    @settings(max_examples=400, deadline=None)
    @given(records)
    def test_the_fast_check_decides_as_the_contract_does(self, record: dict[str, Any]) -> None:
        for text in renderings(record):
            assert fast_rule(text) == contract_rule(text), text

    @pytest.mark.parametrize(
        "text",
        [
            '{"a":1e16}',  # orjson's exponent: not the standard library's 1e+16
            '{"a":1e+16}',
            '{"a":18446744073709551616}',  # beyond 64 bits: orjson reads a float
            '{"a":NaN}',
            '{"a":"\\u00e9"}',  # escaped where the canonical form is not
            '{"a":1,"a":2}',
            '{"b":1,"a":2}',
            '{"a":-0}',
            "[1,2]",
            '{"a":1} ',
            "not json",
        ],
    )
    def test_edge_texts_are_decided_as_the_contract_decides(self, text: str) -> None:
        assert fast_rule(text) == contract_rule(text)


class TestCompactRangeExtend:
    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(min_value=0, max_value=70), min_size=1, max_size=6))
    def test_extend_grows_the_tree_as_pushing_does(self, batches: list[int]) -> None:
        pushed, extended = merkle.CompactRange(), merkle.CompactRange()
        counter = 0
        for count in batches:
            leaves = [hashlib.sha256(str(counter + i).encode()).digest() for i in range(count)]
            counter += count
            for leaf in leaves:
                pushed.push(leaf)
            extended.extend(leaves)
            assert (extended.size, extended.hashes, extended.root()) == (
                pushed.size,
                pushed.hashes,
                pushed.root(),
            )

    @settings(max_examples=200, deadline=None)
    @given(st.integers(min_value=0, max_value=200), st.integers(min_value=0, max_value=6), st.data())
    def test_followed_by_grows_the_tree_as_pushing_does(
        self, before: int, level: int, data: st.DataObject
    ) -> None:
        # ``before`` leaves rounded down to a multiple of 2**level, then up to 2**level more.
        before -= before % (1 << level)
        count = data.draw(st.integers(min_value=0, max_value=1 << level))
        leaves = [hashlib.sha256(str(i).encode()).digest() for i in range(before + count)]
        pushed, head, tail = merkle.CompactRange(), merkle.CompactRange(), merkle.CompactRange()
        for leaf in leaves:
            pushed.push(leaf)
        head.extend(leaves[:before])
        tail.extend(leaves[before:])
        joined = head.followed_by(tail.size, tail.hashes)
        assert (joined.size, joined.hashes, joined.root()) == (pushed.size, pushed.hashes, pushed.root())
        assert (head.size, len(head.hashes)) == (before, bin(before).count("1"))  # left as it was

    def test_followed_by_refuses_leaves_off_their_subtree_boundary(self) -> None:
        head = merkle.CompactRange()
        head.extend([b"\x00" * 32] * 3)
        with pytest.raises(ValueError, match="boundary"):
            head.followed_by(2, [b"\x01" * 32])
        with pytest.raises(ValueError, match="one hash per set bit"):
            head.followed_by(1, [])


def _log(count: int, every: int) -> tuple[NoteVerifier, list[StoredCheckpoint], list[tuple[Any, ...]]]:
    signer = NoteSigner("tests.example/audit", Ed25519PrivateKey.generate())
    rows: list[tuple[Any, ...]] = []
    checkpoints: list[StoredCheckpoint] = []
    tree = merkle.CompactRange()
    for index in range(count):
        text = canonical_json({"n": index, "time": "2026-12-02T01:00:00+00:00"})
        leaf = hashlib.sha256(b"\x00" + text.encode()).digest()
        tree.push(leaf)
        rows.append((index, index + 1, text, leaf))
        if tree.size % every == 0:
            note = signer.sign(Checkpoint(signer.name, tree.size, tree.root()).body())
            checkpoints.append(
                StoredCheckpoint(tree.size, tree.root(), note, f"checkpoint (size {tree.size})")
            )
    return NoteVerifier.parse(signer.verifier_key()), checkpoints, rows


def _first_problem(feed: Any) -> str | None:
    try:
        feed()
    except VerificationFailed as exc:
        return str(exc)
    return None


class TestRowsAtOnce:
    @pytest.mark.parametrize("damaged", [3, 9, 10, 17, 22])
    def test_the_first_problem_is_the_one_leaf_by_leaf_reports(self, damaged: int) -> None:
        verifier, checkpoints, rows = _log(24, every=10)
        # Leaf 12's recorded hash is lost and its entry changed: only checkpoint 20 can tell.
        rows[12] = (12, 13, canonical_json({"n": 99, "time": "2026-12-02T01:00:00+00:00"}), None)
        rows[damaged] = (damaged, damaged + 1, rows[damaged][2] + " ", rows[damaged][3])
        one_by_one = LogVerifier(verifier, list(checkpoints))
        at_once = LogVerifier(verifier, list(checkpoints))

        def singly() -> None:
            for leaf, entry, text, recorded in rows:
                one_by_one.add(leaf, f"entry {entry}", text, recorded)

        expected = _first_problem(singly)
        assert expected is not None
        assert _first_problem(lambda: at_once.add_rows(rows)) == expected


def _damaged_log(damaged: int, gap: int | None) -> tuple[NoteVerifier, list[StoredCheckpoint], list[Any]]:
    verifier, checkpoints, rows = _log(30, every=10)
    # Leaf 12's recorded hash is lost and its entry changed: only checkpoint 20 can tell.
    rows[12] = (12, 13, canonical_json({"n": 99, "time": "2026-12-02T01:00:00+00:00"}), None)
    rows[damaged] = (damaged, damaged + 1, rows[damaged][2] + " ", rows[damaged][3])
    if gap is not None:
        del rows[gap]  # a leaf removed: missing where it stood
    return verifier, checkpoints, rows


def _feed_pages(log: LogVerifier, rows: list[Any], size: int, page: int) -> None:
    """Pages by leaf index, as the workers read them (a removed leaf leaves a page short),
    each checked apart and told the checkpoints inside it, then fed in order."""
    for start, below, cuts in page_bounds(log, size, page):
        take_page(log, check_page([row for row in rows if start <= row[0] < below], cuts))


class TestPagesApart:
    @pytest.mark.parametrize("page", [1, 2, 4, 8, 16, 64])
    @pytest.mark.parametrize(
        ("damaged", "gap"),
        [
            (3, None),
            (9, None),
            (10, None),
            (17, None),
            (22, None),
            (25, 2),
            (25, 6),
            (25, 9),
            (6, 5),
            (28, 20),
        ],
    )
    def test_the_first_problem_is_the_one_leaf_by_leaf_reports(
        self, page: int, damaged: int, gap: int | None
    ) -> None:
        verifier, checkpoints, rows = _damaged_log(damaged, gap)
        one_by_one = LogVerifier(verifier, list(checkpoints))
        in_pages = LogVerifier(verifier, list(checkpoints))

        def singly() -> None:
            for leaf, entry, text, recorded in rows:
                one_by_one.add(leaf, f"entry {entry}", text, recorded)

        expected = _first_problem(singly)
        assert expected is not None
        assert _first_problem(lambda: _feed_pages(in_pages, rows, 30, page)) == expected

    @pytest.mark.parametrize("page", [1, 4, 8, 32])
    def test_an_intact_log_grows_the_same_tree(self, page: int) -> None:
        verifier, checkpoints, rows = _log(30, every=10)
        whole, in_pages = LogVerifier(verifier, list(checkpoints)), LogVerifier(verifier, list(checkpoints))
        whole.add_rows(rows)
        _feed_pages(in_pages, rows, 30, page)
        assert (in_pages.compact.hashes, in_pages.checked_checkpoints) == (whole.compact.hashes, 3)
        assert in_pages.finish() == whole.finish() == 30

    @pytest.mark.parametrize("leaf", [11, 12, 19])
    def test_a_change_only_a_checkpoint_inside_the_page_can_tell_is_named(self, leaf: int) -> None:
        # The entry and its recorded leaf hash changed together: only checkpoint 20, inside
        # the page of leaves 16 to 31, can tell, and it is checked on the page's range at 20.
        verifier, checkpoints, rows = _log(30, every=10)
        text = canonical_json({"n": 99, "time": "2026-12-02T01:00:00+00:00"})
        rows[leaf] = (leaf, leaf + 1, text, hashlib.sha256(b"\x00" + text.encode()).digest())
        in_pages = LogVerifier(verifier, list(checkpoints))
        assert _first_problem(lambda: _feed_pages(in_pages, rows, 30, 16)) == (
            "checkpoint (size 20): the root of leaves 10..19 does not match; "
            "an entry in that range was changed"
        )
        assert in_pages.checked_checkpoints == 1

    def test_a_checkpoint_passed_without_its_range_fails_closed(self) -> None:
        verifier, checkpoints, rows = _log(30, every=10)
        in_pages = LogVerifier(verifier, list(checkpoints))
        with pytest.raises(RuntimeError, match="passed without its root checked"):
            take_page(in_pages, check_page(rows[:16], cuts=[]))  # checkpoint 10 not asked for


names = st.lists(st.sampled_from(["dvla", "hmrc", "welfare", "a,b", ""]), max_size=3)
times = st.one_of(
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=2))])).map(
        lambda moment: moment.isoformat()
    ),
    st.sampled_from(
        [
            "2026-11-29T10:00:00+00:00",
            "2026-11-29T10:00:00.005000+00:00",
            "2026-11-29 10:00:00.005000+00:00",
            "2026-11-29T10:00:00.005+00:00",
            "2026-W48-7T10:00:00.005000+00:00",
            "2026-11-29T10:00:00,005000+00:00",
            "2026-11-29T10:00:00.005000",
            "2026-11-29T10:00:00.005000Z",
            "not a time",
        ]
    ),
)
entry_records = st.fixed_dictionaries(
    {
        "time": times,
        "client_id": st.sampled_from(["welfare-consumer", "dvla-writer"]),
        "department": st.sampled_from(["welfare", "dvla"]),
        "citizen_id": st.none() | st.sampled_from(["c-1", "c-2"]),
        "action": st.sampled_from(["read", "lookup"]),
        "decision": st.sampled_from(["permit", "deny"]),
        "purpose": st.none() | st.just("benefit-eligibility"),
        "owners": names,
        "fields_requested": names,
        "fields_released": names,
    }
)


def _stored_as_written(record: dict[str, Any], as_text: bool) -> list[Any]:
    """The columns the writer stores for ``record``: ``time`` as SQLite's text or an instant."""
    values = list(filter_values(record))
    if as_text:
        values[0] = sqlite_time_text(values[0])
    return values


class TestColumnsQuickly:
    @settings(max_examples=400, deadline=None)
    @given(entry_records, st.booleans(), st.integers(min_value=0, max_value=9), st.data())
    def test_the_quick_comparison_never_passes_what_the_plain_one_refuses(
        self, record: dict[str, Any], as_text: bool, changed: int, data: st.DataObject
    ) -> None:
        try:
            stored = _stored_as_written(record, as_text)
        except ValueError:
            stored = ["2026-11-29 10:00:00.000000", *list(record.values())[1:7], ",dvla,", ""]
        if changed < 9:
            # One stored column as an attacker (or a bug) could have left it.
            stored[changed] = data.draw(
                st.sampled_from(
                    [
                        None,
                        "",
                        "2026-11-29 10:00:00.005000",
                        "2026-W48-7 10:00:00.005000",
                        ",dvla,",
                        "welfare",
                        datetime(2026, 11, 29, 10, tzinfo=UTC),
                    ]
                )
            )
        plain = derived_column_difference(record, stored)
        assert column_difference(record, stored) == plain
        if _columns_match(record, stored):
            assert plain is None

    @pytest.mark.parametrize(
        ("requested", "released"),
        [
            (["b", "a"], ["a"]),
            (["b"], ["a", "a"]),  # the same names split otherwise: the same column
            (["a", None], []),
            ([None], ["a"]),
            ([1], []),
            ([["a"]], []),
            ("ab", []),  # a string is its letters, as the writer unpacks it
            ([], []),
        ],
    )
    def test_the_remembered_fields_column_is_the_one_derived(self, requested: Any, released: Any) -> None:
        def derived() -> str | None:
            try:
                return _comma_wrapped([*requested, *released])
            except TypeError:
                return None

        expected = derived()
        for _ in range(2):  # the second answer may be the remembered one
            try:
                answer: str | None = _fields_wrapped(requested, released)
            except TypeError:
                answer = None
            assert answer == expected

    def test_the_usual_shapes_take_the_quick_path(self) -> None:
        for time in ("2026-11-29T10:00:00+00:00", "2026-11-29T10:00:00.005000+00:00"):
            record = {
                "time": time,
                "client_id": "welfare-consumer",
                "department": "welfare",
                "citizen_id": "c-1",
                "action": "read",
                "decision": "permit",
                "purpose": None,
                "owners": ["hmrc", "dvla"],
                "fields_requested": ["b", "a"],
                "fields_released": ["a"],
            }
            assert _columns_match(record, _stored_as_written(record, as_text=True))
            assert _columns_match(record, _stored_as_written(record, as_text=False))
