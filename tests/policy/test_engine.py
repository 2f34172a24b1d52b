"""The pure engine: no database, no web framework."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from service.policy.engine import (
    ACTIONS,
    Agreement,
    CompiledPolicy,
    ConditionError,
    Decision,
    RequestContext,
    check_condition_names,
    compile_condition,
    compile_policy,
)
from service.policy.simulate import draft_policy

OWNERS = {
    "national_id": "register",
    "address": "register",
    "licence_status": "dvla",
    "points": "dvla",
    "tax_code": "revenue",
}
PURPOSES = ["benefit-eligibility", "tax-administration", "fraud-investigation", "address-update"]
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def agreement(agreement_id: str = "licence-for-welfare", **changes: object) -> Agreement:
    values: dict[str, object] = {
        "id": agreement_id,
        "owner": "dvla",
        "consumer": "welfare",
        "fields": ("licence_status",),
        "actions": ("read",),
        "purposes": ("benefit-eligibility",),
        "legal_basis": "Social Security Administration Act 1992, s.122",
    }
    values.update(changes)
    return Agreement(**values)  # type: ignore[arg-type]


def policy(*agreements: Agreement) -> CompiledPolicy:
    return compile_policy(agreements, OWNERS, PURPOSES, epoch=7)


def context(purpose: str = "benefit-eligibility", **changes: object) -> RequestContext:
    values: dict[str, object] = {
        "purpose": purpose,
        "case_ref": None,
        "time": NOW,
        "citizen_status": "active",
    }
    values.update(changes)
    return RequestContext(**values)  # type: ignore[arg-type]


def decide_one(compiled: CompiledPolicy, field: str = "licence_status", **kwargs: object) -> tuple[str, str]:
    consumer = str(kwargs.pop("consumer", "welfare"))
    action = str(kwargs.pop("action", "read"))
    decision = compiled.decide(consumer, action, [field], context(**kwargs))[field]  # type: ignore[arg-type]
    return decision.effect, decision.reason


class TestDecide:
    def test_permit_names_agreement_version_and_legal_basis(self) -> None:
        decision = policy(agreement(version=3)).decide("welfare", "read", ["licence_status"], context())[
            "licence_status"
        ]
        assert decision.effect == "permit"
        assert decision.agreement == "licence-for-welfare"
        assert decision.version == 3
        assert decision.legal_basis == "Social Security Administration Act 1992, s.122"
        assert decision.to_record() == {
            "field": "licence_status",
            "effect": "permit",
            "agreement": "licence-for-welfare",
            "version": 3,
            "reason": (
                "agreement licence-for-welfare permits welfare to read licence_status for benefit-eligibility"
            ),
            "legal_basis": "Social Security Administration Act 1992, s.122",
            "allowed_claims": None,
            "digest": None,
        }

    def test_default_deny_with_readable_reason(self) -> None:
        compiled = policy(agreement())
        decisions = compiled.decide("welfare", "read", ["tax_code", "licence_status"], context())
        assert decisions["tax_code"].effect == "deny"
        assert (
            decisions["tax_code"].reason == "no agreement lets welfare read tax_code for benefit-eligibility"
        )
        assert decisions["tax_code"].agreement is None
        assert decisions["licence_status"].effect == "permit"
        assert list(decisions) == ["tax_code", "licence_status"]

    def test_other_action_and_other_consumer_are_denied(self) -> None:
        compiled = policy(agreement())
        assert decide_one(compiled, action="write")[0] == "deny"
        assert decide_one(compiled, action="subscribe")[0] == "deny"
        assert decide_one(compiled, consumer="revenue") == (
            "deny",
            "no agreement lets revenue read licence_status for benefit-eligibility",
        )

    def test_purpose_outside_the_agreement(self) -> None:
        assert decide_one(policy(agreement()), purpose="tax-administration") == (
            "deny",
            "agreement licence-for-welfare covers benefit-eligibility, not tax-administration",
        )

    def test_unknown_purpose_action_and_field(self) -> None:
        compiled = policy(agreement())
        assert decide_one(compiled, purpose="curiosity") == ("deny", "unknown purpose 'curiosity'")
        assert decide_one(compiled, action="delete") == ("deny", "unknown action 'delete'")
        assert decide_one(compiled, field="shoe_size") == ("deny", "unknown field 'shoe_size'")

    def test_forbid_wins_over_permit(self) -> None:
        forbid = agreement("no-licence-for-welfare", effect="forbid", purposes=(), version=2)
        decision = policy(agreement(), forbid).decide("welfare", "read", ["licence_status"], context())[
            "licence_status"
        ]
        assert decision.effect == "deny"
        assert decision.agreement == "no-licence-for-welfare"
        assert decision.version == 2
        assert decision.reason == "agreement no-licence-for-welfare forbids welfare to read licence_status"

    def test_forbid_limited_to_a_purpose(self) -> None:
        forbid = agreement("no-fraud", effect="forbid", purposes=("fraud-investigation",))
        permit = agreement(purposes=("benefit-eligibility", "fraud-investigation"))
        compiled = policy(permit, forbid)
        assert decide_one(compiled)[0] == "permit"
        assert decide_one(compiled, purpose="fraud-investigation")[0] == "deny"

    def test_expired_agreement(self) -> None:
        compiled = policy(agreement("licence-for-revenue", valid_until=date(2020, 1, 1)))
        assert decide_one(compiled) == ("deny", "agreement licence-for-revenue expired 2020-01-01")
        # valid_until is inclusive: the whole last day is still covered.
        assert decide_one(compiled, time=datetime(2020, 1, 1, 23, 59, tzinfo=UTC))[0] == "permit"
        assert decide_one(compiled, time=datetime(2020, 1, 2, tzinfo=UTC))[0] == "deny"

    def test_not_yet_valid(self) -> None:
        compiled = policy(agreement(valid_from=date(2027, 1, 1)))
        assert decide_one(compiled) == ("deny", "agreement licence-for-welfare starts 2027-01-01")
        assert decide_one(compiled, time=datetime(2027, 1, 1, tzinfo=UTC))[0] == "permit"

    def test_case_reference_required(self) -> None:
        compiled = policy(agreement(require_case_ref=True))
        assert decide_one(compiled) == ("deny", "agreement licence-for-welfare needs a case reference")
        assert decide_one(compiled, case_ref="CASE-1")[0] == "permit"

    def test_condition_on_citizen_status(self) -> None:
        compiled = policy(agreement(when='citizen.status == "active"'))
        assert decide_one(compiled)[0] == "permit"
        assert decide_one(compiled, citizen_status="deceased") == (
            "deny",
            'agreement licence-for-welfare condition not met: citizen.status == "active"',
        )

    def test_condition_on_request_purpose_and_case_ref(self) -> None:
        when = 'request.purpose == "fraud-investigation" || request.case_ref != null'
        compiled = policy(agreement(purposes=("benefit-eligibility", "fraud-investigation"), when=when))
        assert decide_one(compiled)[0] == "deny"
        assert decide_one(compiled, case_ref="C-9")[0] == "permit"
        assert decide_one(compiled, purpose="fraud-investigation")[0] == "permit"

    def test_condition_on_request_time(self) -> None:
        compiled = policy(agreement(when='request.time < timestamp("2026-07-01T00:00:00Z")'))
        assert decide_one(compiled)[0] == "permit"
        assert decide_one(compiled, time=datetime(2026, 8, 1, tzinfo=UTC))[0] == "deny"

    def test_condition_that_cannot_be_evaluated_fails_closed(self) -> None:
        # Unknown status: null compared with a string errors in CEL, or is false.
        permit = agreement(when="citizen.status.startsWith('a')")
        assert decide_one(policy(permit), citizen_status=None)[0] == "deny"
        forbid = agreement("no-licence", effect="forbid", purposes=(), when="citizen.status.startsWith('a')")
        assert decide_one(policy(agreement(), forbid), citizen_status=None)[0] == "deny"

    @pytest.mark.parametrize("when", ["citizen.status", "request.case_ref", "1", '"true"'])
    def test_condition_that_is_not_true_or_false_fails_closed(self, when: str) -> None:
        # Neither true nor false cannot be decided: a forbid applies, a permit does not.
        forbid = agreement("no-licence", effect="forbid", purposes=(), when=when)
        assert decide_one(policy(agreement(), forbid), case_ref="C-1") == (
            "deny",
            "agreement no-licence forbids welfare to read licence_status",
        )
        assert decide_one(policy(agreement(when=when)), case_ref="C-1") == (
            "deny",
            f"agreement licence-for-welfare condition could not be evaluated: {when}",
        )

    def test_owner_is_permitted_everything_on_its_own_fields(self) -> None:
        compiled = policy()
        for action in ACTIONS:
            decision = compiled.decide("dvla", action, ["licence_status", "points"], context())
            assert {d.effect for d in decision.values()} == {"permit"}
            assert decision["points"].reason == "owner"
            assert decision["points"].agreement is None
        assert decide_one(compiled, consumer="dvla", field="tax_code")[0] == "deny"

    def test_agreement_never_grants_a_field_its_owner_does_not_own(self) -> None:
        # E.g. kept from an older catalog in which dvla owned tax_code.
        stale = agreement(fields=("licence_status", "tax_code"), purposes=("tax-administration",))
        decisions = policy(stale).decide(
            "welfare", "read", ["licence_status", "tax_code"], context("tax-administration")
        )
        assert decisions["licence_status"].effect == "permit"
        assert (
            decisions["tax_code"].reason == "no agreement lets welfare read tax_code for tax-administration"
        )

    def test_epoch_is_kept(self) -> None:
        assert policy().epoch == 7


def delayed(
    agreement_id: str, owner: str, fields: tuple[str, ...], days: int, **changes: object
) -> Agreement:
    """A delayed-disclosure permit for welfare (``disclosure: after-case-closed``)."""
    values: dict[str, object] = {
        "owner": owner,
        "fields": fields,
        "purposes": ("fraud-investigation",),
        "disclosure_delay": timedelta(days=days),
    }
    values.update(changes)
    return agreement(agreement_id, **values)


def under_a_case(
    compiled: CompiledPolicy, *fields: str, purpose: str = "fraud-investigation"
) -> dict[str, Decision]:
    return compiled.decide("welfare", "read", list(fields), context(purpose, case_ref="FRAUD-1"))


class TestRefusalsUnderACase:
    """A refusal under a case is held from the citizen, and cites only an agreement of the
    refused field's owner: that owner sees the reason in its own audit view."""

    def test_another_owners_delayed_agreement_is_not_cited_but_the_refusal_is_held(self) -> None:
        # Only the register gave welfare a delayed-disclosure agreement; dvla's points are
        # refused under the case.
        compiled = policy(delayed("register-fraud-reads", "register", ("address",), 30))
        refused = under_a_case(compiled, "points")["points"]
        assert (refused.effect, refused.agreement, refused.version) == ("deny", None, None)
        assert (refused.legal_basis, refused.digest) == (None, None)
        assert refused.reason == "no agreement lets welfare read points for fraud-investigation"
        assert refused.held_for == timedelta(days=30)
        # The register's own field still cites its own agreement.
        address = under_a_case(compiled, "address", purpose="tax-administration")["address"]
        assert (address.agreement, address.held_for) == ("register-fraud-reads", None)
        # So does an explanation dvla asks for about its field.
        explained = compiled.explain(
            "welfare", "read", ["points"], context("fraud-investigation", case_ref="C")
        )
        assert explained["points"].decision.agreement is None
        assert "register-fraud-reads" not in repr(explained["points"])

    def test_a_field_with_grants_of_its_owner_none_delayed_is_held_without_a_citation(self) -> None:
        compiled = policy(
            delayed("register-fraud-reads", "register", ("address",), 30),
            agreement("licence-for-welfare", purposes=("benefit-eligibility",)),
        )
        refused = under_a_case(compiled, "licence_status")["licence_status"]
        assert (refused.effect, refused.agreement, refused.held_for) == ("deny", None, timedelta(days=30))
        assert (
            refused.reason
            == "agreement licence-for-welfare covers benefit-eligibility, not fraud-investigation"
        )

    def test_a_forbid_of_an_owner_with_no_delayed_agreement_is_cited_and_held(self) -> None:
        compiled = policy(
            delayed("register-fraud-reads", "register", ("address",), 30),
            agreement("no-points-for-welfare", fields=("points",), effect="forbid", purposes=()),
        )
        refused = under_a_case(compiled, "points")["points"]
        assert (refused.agreement, refused.held_for) == ("no-points-for-welfare", timedelta(days=30))

    def test_the_owners_own_delayed_agreement_is_cited_before_another_owners(self) -> None:
        # The register's matches the action and purpose; dvla's, on another field, another
        # purpose: dvla's field cites dvla's.
        compiled = policy(
            delayed("register-fraud-reads", "register", ("address",), 30),
            delayed(
                "dvla-licence-checks", "dvla", ("licence_status",), 90, purposes=("benefit-eligibility",)
            ),
        )
        refused = under_a_case(compiled, "points")["points"]
        assert (refused.agreement, refused.version) == ("dvla-licence-checks", 1)
        assert refused.held_for is None
        # And the register's fields cite the register's.
        assert under_a_case(compiled, "national_id")["national_id"].agreement == "register-fraud-reads"

    def test_of_the_owners_agreements_the_same_action_and_purpose_first(self) -> None:
        compiled = policy(
            delayed(
                "a-dvla-other-purpose", "dvla", ("licence_status",), 90, purposes=("benefit-eligibility",)
            ),
            delayed("b-dvla-other-action", "dvla", ("licence_status",), 60, actions=("verify",)),
            delayed("c-dvla-fraud", "dvla", ("licence_status",), 30),
        )
        assert under_a_case(compiled, "points")["points"].agreement == "c-dvla-fraud"
        # Without one for the purpose: the same action first.
        assert under_a_case(compiled, "points", purpose="tax-administration")["points"].agreement == (
            "a-dvla-other-purpose"
        )

    def test_a_consumer_with_no_delayed_agreement_is_refused_in_the_open(self) -> None:
        refused = under_a_case(policy(agreement()), "points")["points"]
        assert (refused.agreement, refused.held_for) == (None, None)
        # And without a case nothing is held.
        compiled = policy(delayed("register-fraud-reads", "register", ("address",), 30))
        plain = compiled.decide("welfare", "read", ["points"], context("fraud-investigation"))["points"]
        assert (plain.agreement, plain.held_for) == (None, None)


class TestExplain:
    def test_near_misses_are_listed(self) -> None:
        compiled = policy(
            agreement("for-fraud", purposes=("fraud-investigation",)),
            agreement("old-pilot", valid_until=date(2020, 1, 1)),
            agreement("with-case", require_case_ref=True),
        )
        explained = compiled.explain("welfare", "read", ["licence_status"], context())["licence_status"]
        assert explained.decision.effect == "deny"
        reasons = sorted(m.reason for m in explained.near_misses)
        assert reasons == [
            "agreement for-fraud covers fraud-investigation, not benefit-eligibility",
            "agreement old-pilot expired 2020-01-01",
            "agreement with-case needs a case reference",
        ]
        assert explained.decision.reason == "; ".join(
            [
                "agreement for-fraud covers fraud-investigation, not benefit-eligibility",
                "agreement old-pilot expired 2020-01-01",
                "agreement with-case needs a case reference",
            ]
        )

    def test_permit_with_near_misses_beside_it(self) -> None:
        compiled = policy(agreement("a-expired", valid_until=date(2020, 1, 1)), agreement("b-current"))
        explained = compiled.explain("welfare", "read", ["licence_status"], context())["licence_status"]
        assert explained.decision.agreement == "b-current"
        assert [m.agreement for m in explained.near_misses] == ["a-expired"]


class TestConditions:
    def test_bad_condition_is_refused(self) -> None:
        with pytest.raises(ConditionError, match="invalid condition"):
            compile_condition("citizen.status ==")

    def test_unknown_variable_is_refused(self) -> None:
        with pytest.raises(ConditionError, match="unknown variable"):
            compile_condition('user.name == "x"')

    @pytest.mark.parametrize(
        ("when", "unknown"),
        [
            ('citizen.stauts == "active"', "citizen.stauts"),
            ('request.purpose == "x" || has(request.caseref)', "request.caseref"),
            ('citizen["state"] == "active"', "citizen.state"),
        ],
    )
    def test_a_name_the_variables_do_not_hold_is_refused(self, when: str, unknown: str) -> None:
        # It compiles, but could never be evaluated: a permit would never apply.
        compile_condition(when)
        with pytest.raises(ConditionError, match=f"unknown variable\\(s\\) {unknown};"):
            check_condition_names(when)

    @pytest.mark.parametrize(
        "when",
        [
            'citizen.status == "active" && request.case_ref != null',
            'request.time.getHours() > 8 && citizen["status"] != "deceased"',
            "request.purpose == 'citizen.anything' || x.citizen.y == 1",
        ],
    )
    def test_the_names_the_variables_hold_pass(self, when: str) -> None:
        check_condition_names(when)

    @pytest.mark.parametrize("macro", ["all", "exists", "exists_one", "map", "filter"])
    def test_a_comprehension_is_refused(self, macro: str) -> None:
        # Nested over list literals, four of them of 30 items took 1.5 s per decision.
        items = "[" + ",".join(["0"] * 30) + "]"
        when = f'{items}.{macro}(a, {items}.all(b, request.purpose != "x"))'
        with pytest.raises(ConditionError, match="comprehensions are not supported"):
            compile_condition(when)
        compile_condition(f'request.purpose in ["{macro}"] || request.purpose == ".{macro}("')

    @pytest.mark.parametrize("macro", ["all", "exists", "map"])
    def test_a_comment_does_not_hide_a_comprehension(self, macro: str) -> None:
        # CEL's line comments may stand between a name and its call.
        items = "[" + ",".join(["0"] * 30) + "]"
        when = f"{items}.{macro} // hidden\n (a, {items}.all // too\n (b, true))"
        with pytest.raises(ConditionError, match="comprehensions are not supported"):
            compile_condition(when)

    def test_a_comment_does_not_hide_a_misspelt_name(self) -> None:
        with pytest.raises(ConditionError, match=r"unknown variable\(s\) citizen\.stauts;"):
            check_condition_names('citizen // hidden\n .stauts == "active"')
        # A comment itself, and "//" inside a string, are fine.
        compile_condition('citizen.status == "active" // the living only')
        check_condition_names('request.purpose == "a//b" || citizen.status == "x" // note')

    @pytest.mark.parametrize(
        "when",
        [
            '"".matches("(?i)\\\\w{200}")',
            'request.case_ref.matches("^F")',
            'matches(request.purpose, "x")',
            'request.purpose.matches // hidden\n ("x")',
        ],
    )
    def test_a_regular_expression_is_refused(self, when: str) -> None:
        # Built on every call: 70 of "(?i)\\w{200}" took about 4 s per decision.
        with pytest.raises(ConditionError, match="regular expressions are not supported"):
            compile_condition(when)
        compile_condition('request.purpose == "matches(" || request.case_ref.startsWith("F")')

    def test_bad_condition_fails_compilation(self) -> None:
        with pytest.raises(ConditionError):
            policy(agreement(when="1 +"))


# --- properties --------------------------------------------------------------------------

FIELDS = sorted(OWNERS)
CONSUMERS = ["welfare", "revenue", "register"]

agreements_strategy = st.builds(
    lambda index, consumer, fields, actions, purposes, until, case_ref, when, effect: Agreement(
        id=f"a{index}",
        # The owner of the first field; other fields of other owners are dropped.
        owner=OWNERS[fields[0]],
        consumer=consumer,
        fields=tuple(f for f in fields if OWNERS[f] == OWNERS[fields[0]]),
        actions=tuple(actions),
        purposes=tuple(purposes) if effect == "permit" or purposes else (),
        legal_basis="law",
        valid_until=until,
        require_case_ref=case_ref and effect == "permit",
        when=when,
        effect=effect,
    ),
    index=st.integers(0, 10_000),
    consumer=st.sampled_from(CONSUMERS),
    fields=st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True),
    actions=st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=3, unique=True),
    purposes=st.lists(st.sampled_from(PURPOSES), min_size=0, max_size=2, unique=True),
    until=st.sampled_from([None, date(2020, 1, 1), date(2030, 1, 1)]),
    case_ref=st.booleans(),
    when=st.sampled_from([None, 'citizen.status == "active"', 'request.purpose == "tax-administration"']),
    effect=st.sampled_from(["permit", "forbid"]),
)
requests_strategy = st.tuples(
    st.sampled_from(CONSUMERS),
    st.sampled_from(ACTIONS),
    st.sampled_from(PURPOSES),
    st.sampled_from([None, "CASE-1"]),
    st.sampled_from(["active", "deceased", None]),
)


def _permitted(
    agreements: list[Agreement], request: tuple[str, str, str, str | None, str | None]
) -> set[str]:
    consumer, action, purpose, case_ref, status = request
    decisions = policy(*agreements).decide(
        consumer, action, FIELDS, context(purpose, case_ref=case_ref, citizen_status=status)
    )
    return {name for name, d in decisions.items() if d.effect == "permit"}


class TestMonotonic:
    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(agreements_strategy, max_size=6, unique_by=lambda a: a.id),
        agreements_strategy,
        requests_strategy,
    )
    def test_adding_a_forbid_never_permits_more(
        self,
        agreements: list[Agreement],
        extra: Agreement,
        request: tuple[str, str, str, str | None, str | None],
    ) -> None:
        forbid = Agreement(
            **{**extra.__dict__, "id": "added-forbid", "effect": "forbid", "require_case_ref": False}
        )
        assert _permitted([*agreements, forbid], request) <= _permitted(agreements, request)

    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(agreements_strategy, min_size=1, max_size=6, unique_by=lambda a: a.id),
        st.data(),
        requests_strategy,
    )
    def test_removing_a_permit_never_permits_more(
        self,
        agreements: list[Agreement],
        data: st.DataObject,
        request: tuple[str, str, str, str | None, str | None],
    ) -> None:
        permits = [a for a in agreements if a.effect == "permit"]
        assume(permits)
        removed = data.draw(st.sampled_from(permits))
        remaining = [a for a in agreements if a is not removed]
        assert _permitted(remaining, request) <= _permitted(agreements, request)


class TestPermitsKept:
    """A permit is made once per grant, field, consumer, action and purpose, and used again."""

    def test_the_same_permit_is_used_again_and_equals_a_fresh_one(self) -> None:
        compiled = policy(agreement(version=3, purposes=("benefit-eligibility", "fraud-investigation")))
        first = compiled.decide("welfare", "read", ["licence_status"], context())["licence_status"]
        again = compiled.decide("welfare", "read", ["licence_status"], context())["licence_status"]
        assert again is first
        other = compiled.decide("welfare", "read", ["licence_status"], context("fraud-investigation"))
        assert other["licence_status"].reason.endswith("for fraud-investigation")
        assert first.reason.endswith("for benefit-eligibility")
        fresh = policy(agreement(version=3, purposes=("benefit-eligibility", "fraud-investigation")))
        made_again = fresh.decide("welfare", "read", ["licence_status"], context())["licence_status"]
        assert made_again == first
        assert made_again is not first  # a recompiled policy makes its own

    def test_a_recompiled_agreement_is_decided_afresh(self) -> None:
        before = policy(agreement(version=3)).decide("welfare", "read", ["licence_status"], context())
        after = policy(agreement(version=4, legal_basis="Another Act")).decide(
            "welfare", "read", ["licence_status"], context()
        )
        assert (before["licence_status"].version, after["licence_status"].version) == (3, 4)
        assert after["licence_status"].legal_basis == "Another Act"


class TestRefusedAgreements:
    """An agreement that does not compile fails its owner's fields closed, and a draft
    compiled from the live policy (what simulate compares) keeps that unless it replaces
    or removes the refused agreement."""

    def _live(self) -> CompiledPolicy:
        refused: list[str] = []
        live = compile_policy(
            [
                agreement(),
                agreement("broken-forbid", effect="forbid", when="citizen.status =="),
                agreement("tax-code-for-welfare", owner="revenue", fields=("tax_code",)),
            ],
            OWNERS,
            PURPOSES,
            refuse=lambda a, _error: refused.append(a.id),
        )
        assert refused == ["broken-forbid"]
        return live

    def test_the_refusal_is_kept_and_fails_the_owner_closed(self) -> None:
        live = self._live()
        assert live.refused == (("dvla", "broken-forbid", 1),)
        decided = live.decide("welfare", "read", ["licence_status", "tax_code"], context())
        assert (decided["licence_status"].effect, decided["licence_status"].agreement) == (
            "deny",
            "broken-forbid",
        )
        assert decided["tax_code"].effect == "permit"

    def test_a_draft_of_another_agreement_keeps_the_stand_in(self) -> None:
        live = self._live()
        draft = draft_policy(live, [agreement("tax-code-for-welfare", owner="revenue", fields=())], [])
        decided = draft.decide("welfare", "read", ["licence_status"], context())["licence_status"]
        assert (decided.effect, decided.agreement) == ("deny", "broken-forbid")
        # Another of the owner's agreements drafted anew does not lift it either.
        draft = draft_policy(live, [agreement(purposes=("tax-administration", "benefit-eligibility"))], [])
        decided = draft.decide("welfare", "read", ["licence_status"], context())["licence_status"]
        assert (decided.effect, decided.agreement) == ("deny", "broken-forbid")

    def test_a_draft_that_replaces_or_removes_the_refused_agreement_lifts_it(self) -> None:
        live = self._live()
        mended = agreement("broken-forbid", effect="forbid", fields=("points",))
        draft = draft_policy(live, [mended], [])
        assert draft.refused == ()
        assert (
            draft.decide("welfare", "read", ["licence_status"], context())["licence_status"].effect
            == "permit"
        )
        draft = draft_policy(live, [], ["broken-forbid"])
        assert (
            draft.decide("welfare", "read", ["licence_status"], context())["licence_status"].effect
            == "permit"
        )


class TestConditionTextIsNotASignal:
    """Whether a condition could be evaluated is a typed signal of the engine, never read
    from the words of a miss's reason: a forbid whose condition is false does not apply,
    whatever its text or its comments say."""

    @pytest.mark.parametrize(
        "when",
        [
            'citizen.status == "deceased" // condition could not be evaluated',
            'request.purpose == "condition could not be evaluated"',
        ],
    )
    def test_a_false_forbid_does_not_apply_whatever_its_text(self, when: str) -> None:
        forbid = agreement("no-licence", effect="forbid", purposes=(), when=when)
        compiled = policy(agreement(), forbid)
        assert decide_one(compiled) == (
            "permit",
            "agreement licence-for-welfare permits welfare to read licence_status for benefit-eligibility",
        )
        explained = compiled.explain("welfare", "read", ["licence_status"], context())["licence_status"]
        assert explained.decision.agreement == "licence-for-welfare"
        assert [(m.agreement, m.reason) for m in explained.near_misses] == [
            ("no-licence", f"agreement no-licence condition not met: {when}")
        ]

    def test_a_forbid_whose_condition_errors_still_applies_in_decide_and_explain(self) -> None:
        when = 'citizen.status.startsWith("a") // could be evaluated'
        forbid = agreement("no-licence", effect="forbid", purposes=(), when=when)
        compiled = policy(agreement(), forbid)
        assert decide_one(compiled, citizen_status=None) == (
            "deny",
            "agreement no-licence forbids welfare to read licence_status",
        )
        explained = compiled.explain("welfare", "read", ["licence_status"], context(citizen_status=None))[
            "licence_status"
        ]
        assert (explained.decision.effect, explained.decision.agreement) == ("deny", "no-licence")
