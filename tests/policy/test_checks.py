"""``service.policy.checks``: a submitted agreement judged in one pass, every independent
problem at once (the API, the console and the policy loader all read agreements so)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from service.catalog.loader import load_catalog
from service.policy.checks import check_body
from tests.conftest import TEST_POLICIES

CATALOG = load_catalog(TEST_POLICIES)
VALID: dict[str, Any] = {
    "id": "points-for-revenue",
    "consumer": "revenue",
    "fields": ["points"],
    "actions": ["read"],
    "purposes": ["tax-administration"],
    "legal_basis": "Finance Act 2008, Sch. 36",
    "reason": "a pilot",
}
# One mistake per part of the agreement, each wrong whatever the others say: a shape
# refusal, or a rule that reads that part alone. Under each, the part it breaks.
BREAKS: dict[str, dict[str, Any]] = {
    "id": {"id": "Points For Revenue"},
    "consumer": {"consumer": "nobody"},
    "fields": {"fields": ["shoe_size"]},
    "actions": {"actions": ["delete"]},
    "purposes": {"purposes": ["gossip"]},
    "legal_basis": {"legal_basis": "x" * 501},
    "valid_from": {"valid_from": "2027-13-01"},
    "valid_until": {"valid_until": 5.5},
    "when": {"when": "citizen.status =="},
    "require_case_ref": {"require_case_ref": "maybe"},
    "max_delay": {"max_delay": "P30D"},  # with the default immediate disclosure
    "effect": {"effect": "allow"},
    "basis": {"basis": "contract"},
    "reason": {"reason": "a\x00pilot"},
    "colour": {"colour": "blue"},
}


class TestEveryIndependentProblem:
    def test_the_valid_agreement_has_none(self) -> None:
        assert check_body(VALID, "dvla", CATALOG).problems == []

    @given(st.sets(st.sampled_from(sorted(BREAKS)), min_size=1))
    def test_each_broken_part_is_reported(self, broken: set[str]) -> None:
        body = dict(VALID)
        for part in broken:
            body |= BREAKS[part]
        checked = check_body(body, "dvla", CATALOG)
        assert checked.spec is None
        reported = {str(loc[0]) for loc, _message in checked.problems}
        assert reported >= broken
        assert len(checked.problems) >= len(broken)


# Items of a list part, each judged on its own: the valid one, one failing its shape and
# ones breaking a catalog rule (unknown, or another department's).
FIELD_ITEMS = ["points", "Bad", "shoe_size", "tax_code", 7]
PURPOSE_ITEMS = ["tax-administration", "Gossip!", "gossip", None]


class TestEveryBrokenItem:
    @given(
        st.lists(st.sampled_from(FIELD_ITEMS), min_size=1, max_size=6),
        st.lists(st.sampled_from(PURPOSE_ITEMS), min_size=1, max_size=6),
    )
    def test_each_broken_item_is_reported_at_its_index_whatever_the_others(
        self, fields: list[Any], purposes: list[Any]
    ) -> None:
        body = VALID | {"fields": fields, "purposes": purposes}
        checked = check_body(body, "dvla", CATALOG)
        reported = {loc[:2] for loc, _message in checked.problems if len(loc) > 1}
        broken = {("fields", i) for i, item in enumerate(fields) if item != "points"}
        broken |= {("purposes", i) for i, item in enumerate(purposes) if item != "tax-administration"}
        assert reported == broken
        assert (checked.spec is None) == bool(broken)

    def test_a_malformed_field_does_not_hide_another_departments_field(self) -> None:
        checked = check_body(VALID | {"fields": ["Bad", "tax_code"]}, "dvla", CATALOG)
        assert checked.problems == [
            (("fields", 0), "'Bad' is not a field name: lower-case letters, digits and underscores"),
            (("fields", 1), "dvla does not own field 'tax_code' (owner: revenue)"),
        ]
