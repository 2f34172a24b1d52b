"""Field values against their catalog types, and verify claims (pure, no database)."""

from __future__ import annotations

import datetime as dt
import unicodedata
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.catalog.schemas import Catalog, FieldSpec
from service.crypto.blind_index import BlindIndexer
from service.crypto.material import KeyMaterial
from service.policy.engine import Decision
from service.records import claims, values
from service.records.values import ValueRejected

STRING = FieldSpec(name="address", owner="register", type="string", max_length=10)
DATE = FieldSpec(name="date_of_birth", owner="register", type="date")
INTEGER = FieldSpec(name="points", owner="dvla", type="integer")
BOOLEAN = FieldSpec(name="self_employed", owner="revenue", type="boolean")
ENUM = FieldSpec(name="licence_status", owner="dvla", type="enum", values=["valid", "revoked"])
# A searchable string: an identifier.
NI_NUMBER = FieldSpec(name="ni_number", owner="dwp", type="string", searchable=True, max_length=9)
# The blind indexes lookup and the duplicate check search by, under a fixed root.
INDEXER = BlindIndexer(KeyMaterial(bytes(range(32))))


class TestValidate:
    @pytest.mark.parametrize(
        ("spec", "raw"),
        [
            (STRING, 5),
            (STRING, "x" * 11),
            (STRING, "bell\x07"),
            (DATE, "2023-02-29"),
            (DATE, "2023-13-01"),
            (DATE, "29/02/2024"),
            (DATE, 20240101),
            (INTEGER, "3"),
            (INTEGER, True),
            (INTEGER, 1.5),
            (INTEGER, 2**60),
            (BOOLEAN, "true"),
            (BOOLEAN, 1),
            (ENUM, "suspended"),
            (ENUM, None),
        ],
    )
    def test_rejects_values_that_do_not_fit(self, spec: FieldSpec, raw: Any) -> None:
        with pytest.raises(ValueRejected):
            values.validate(spec, raw)

    @pytest.mark.parametrize("spec", [STRING, DATE, ENUM])
    def test_message_names_the_rule_never_the_value(self, spec: FieldSpec) -> None:
        with pytest.raises(ValueRejected) as caught:
            values.validate(spec, "Confidential Smith 1984")
        assert "Confidential" not in str(caught.value)

    def test_accepts_a_leap_day(self) -> None:
        assert values.validate(DATE, "2024-02-29") == "2024-02-29"

    @given(st.text(max_size=10).filter(lambda s: all(ord(c) >= 32 or c in "\t\n" for c in s)))
    def test_string_round_trip(self, text: str) -> None:
        clean = values.validate(STRING, text)
        assert values.decode(STRING, values.encode(STRING, clean)) == text

    @given(st.dates())
    def test_date_round_trip(self, day: dt.date) -> None:
        clean = values.validate(DATE, day.isoformat())
        assert values.decode(DATE, values.encode(DATE, clean)) == day.isoformat()

    @given(st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1))
    def test_integer_round_trip(self, number: int) -> None:
        assert values.decode(INTEGER, values.encode(INTEGER, values.validate(INTEGER, number))) == number

    @given(st.booleans())
    def test_boolean_round_trip(self, flag: bool) -> None:
        assert values.decode(BOOLEAN, values.encode(BOOLEAN, values.validate(BOOLEAN, flag))) is flag


class TestIdentifiers:
    def test_an_identifier_is_stored_without_whitespace_and_measured_so(self) -> None:
        assert values.validate(NI_NUMBER, " AB 12\u00a034\u300056 C ") == "AB123456C"
        with pytest.raises(ValueRejected, match="at most 9"):
            values.validate(NI_NUMBER, "AB 12 34 56 CD")

    def test_other_strings_keep_their_spaces(self) -> None:
        assert values.validate(STRING, " a  b ") == " a  b "

    def test_a_control_character_inside_is_refused(self) -> None:
        for control in ("\t", "\n", "\x85", "\u200b"):
            with pytest.raises(ValueRejected, match="invisible characters"):
                values.validate(NI_NUMBER, "AB12" + control + "3456C")

    def test_claims_compare_the_stored_spelling(self) -> None:
        today = dt.date(2026, 12, 6)
        assert values.operand(NI_NUMBER, "AB 12 34 56 C", today) == "AB123456C"
        assert values.check_claim(NI_NUMBER, "AB123456C", "eq", "AB 12 34 56 C") is True
        assert values.check_claim(NI_NUMBER, "AB123456C", "in", ["X", "AB\u00a0123456C"]) is True
        # A value stored with spaces before normalisation 3.
        assert values.check_claim(NI_NUMBER, "AB 12 34 56 C", "eq", "AB123456C") is True
        assert values.check_claim(NI_NUMBER, "AB123456C", "eq", "AB123456D") is False
        with pytest.raises(ValueRejected):
            values.check_claim(NI_NUMBER, "AB123456C", "eq", "AB123456C\u200b")

    def test_claims_on_an_identifier_ignore_case_as_lookup_does(self) -> None:
        assert values.check_claim(NI_NUMBER, "AB123456C", "eq", "ab123456c") is True
        assert values.check_claim(NI_NUMBER, "ab123456c", "in", ["X", "AB 123456 C"]) is True
        # Fullwidth letters are the same id too (NFKC).
        assert values.check_claim(NI_NUMBER, "AB123456C", "eq", "\uff41\uff42123456\uff43") is True
        assert values.check_claim(NI_NUMBER, "AB123456C", "eq", "ab123456d") is False
        # Other strings are compared as they are.
        assert values.check_claim(STRING, "Rose Lane", "eq", "rose lane") is False
        assert values.check_claim(STRING, "Rose Lane", "eq", "Rose Lane") is True

    @given(st.text(min_size=1, max_size=9), st.data())
    def test_an_identifier_claim_holds_when_the_blind_indexes_match(
        self, stored: str, data: st.DataObject
    ) -> None:
        """eq holds exactly when lookup by the operand would find the stored value: when
        the two have one blind index (under one key, one normalisation)."""
        asked = data.draw(
            st.sampled_from(
                [
                    stored.swapcase(),
                    "\u00a0".join(stored),
                    unicodedata.normalize("NFKD", stored),
                    stored.upper(),
                ]
            )
            | st.text(min_size=1, max_size=9)
        )
        try:
            value = values.validate(NI_NUMBER, stored)
            operand = values.operand(NI_NUMBER, asked, dt.date(2026, 12, 6))
        except ValueRejected:
            return
        same_index = INDEXER.index("ni_number", str(value)) == INDEXER.index("ni_number", str(operand))
        assert values.check_claim(NI_NUMBER, value, "eq", asked) is same_index


class TestClaims:
    def test_date_comparisons(self) -> None:
        assert values.check_claim(DATE, "2000-06-15", "lte", "2008-11-29") is True
        assert values.check_claim(DATE, "2000-06-15", "gte", "2008-11-29") is False
        assert values.check_claim(DATE, "2000-06-15", "eq", "2000-06-15") is True

    def test_membership(self) -> None:
        assert values.check_claim(ENUM, "valid", "in", ["valid", "revoked"]) is True
        assert values.check_claim(ENUM, "revoked", "in", ["valid"]) is False

    def test_ordering_is_only_for_dates_and_integers(self) -> None:
        with pytest.raises(ValueRejected):
            values.check_claim(ENUM, "valid", "lte", "valid")

    def test_operand_is_validated(self) -> None:
        with pytest.raises(ValueRejected):
            values.check_claim(DATE, "2000-01-01", "lte", "2000-02-30")
        with pytest.raises(ValueRejected):
            values.check_claim(ENUM, "valid", "in", [])

    @given(st.integers(-1000, 1000), st.integers(-1000, 1000))
    def test_integer_ordering_matches_python(self, left: int, right: int) -> None:
        assert values.check_claim(INTEGER, left, "lte", right) is (left <= right)
        assert values.check_claim(INTEGER, left, "gte", right) is (left >= right)


class TestFixedClaims:
    """An agreement's fixed ``verify:`` claims are matched as claims compare: an identifier
    without case or whitespace, anything else as it is."""

    CATALOG = Catalog(departments=[], purposes=[], fields=[NI_NUMBER, STRING])

    @staticmethod
    def _outside(name: str, fixed: dict[str, tuple[Any, ...]], asked: dict[str, Any]) -> list[str]:
        decision = Decision(
            field=name, effect="permit", agreement="a", version=1, reason="", allowed_claims=fixed
        )
        return claims.outside_agreements(
            TestFixedClaims.CATALOG, {name: asked}, {name: decision}, [name], dt.date(2026, 12, 6)
        )

    def test_an_identifier_in_another_spelling_is_the_fixed_claim(self) -> None:
        fixed = {"eq": ("AB123456C",)}
        assert self._outside("ni_number", fixed, {"eq": "ab 123456 c"}) == []
        assert self._outside("ni_number", fixed, {"in": ["AB123456C", "ab123456c"]}) == []
        assert self._outside("ni_number", fixed, {"eq": "AB123456D"}) != []

    def test_another_string_must_be_the_fixed_claim_exactly(self) -> None:
        assert self._outside("address", {"eq": ("Rose Lane",)}, {"eq": "Rose Lane"}) == []
        assert self._outside("address", {"eq": ("Rose Lane",)}, {"eq": "rose lane"}) != []
