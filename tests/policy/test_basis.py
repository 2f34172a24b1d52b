"""An agreement's legal basis: statutory, consent or objectable, in the engine, the
loader and the signed form."""

from __future__ import annotations

from typing import Any

from service.catalog.loader import load_catalog
from service.policy.engine import CONSENT_REQUIRED, OBJECTED, consented
from service.policy.rules import check_agreement
from service.policy.schemas import AgreementSpec
from service.policy.signing import OwnerSigner, OwnerVerifier
from tests.conftest import TEST_POLICIES
from tests.policy.test_engine import agreement, context, policy

CONSENT = agreement("licence-with-consent", basis="consent")
OBJECTABLE = agreement("licence-unless-objected", basis="objectable")


class TestDecision:
    def test_consent_based_grant_needs_the_citizens_active_consent(self) -> None:
        compiled = policy(CONSENT)
        [decision] = compiled.decide("welfare", "read", ["licence_status"], context()).values()
        assert (decision.effect, decision.reason) == ("deny", CONSENT_REQUIRED)
        given = context(
            consents=consented(CONSENT.id, "welfare", "benefit-eligibility", ["licence_status"], ["read"])
        )
        [decision] = compiled.decide("welfare", "read", ["licence_status"], given).values()
        assert (decision.effect, decision.agreement) == ("permit", CONSENT.id)

    def test_a_consent_releases_only_what_its_terms_name(self) -> None:
        """An agreement widened (another field), redirected (another consumer) or
        repurposed after the citizen consented releases nothing new under that consent."""
        widened = agreement("licence-with-consent", basis="consent", fields=("licence_status", "points"))
        compiled = policy(widened)
        given = context(
            consents=consented(widened.id, "welfare", "benefit-eligibility", ["licence_status"], ["read"])
        )
        decisions = compiled.decide("welfare", "read", ["licence_status", "points"], given)
        assert decisions["licence_status"].effect == "permit"
        assert (decisions["points"].effect, decisions["points"].reason) == ("deny", CONSENT_REQUIRED)
        [explained] = compiled.explain("welfare", "read", ["points"], given).values()
        assert explained.near_misses[0].reason == (
            f"consent-required: the citizen's consent to agreement {widened.id} was given to terms "
            "that do not cover welfare using points for benefit-eligibility"
        )
        for consumer, purpose in (("revenue", "benefit-eligibility"), ("welfare", "tax-administration")):
            elsewhere = context(
                consents=consented(widened.id, consumer, purpose, ["licence_status", "points"], ["read"])
            )
            [decision] = compiled.decide("welfare", "read", ["licence_status"], elsewhere).values()
            assert (decision.effect, decision.reason) == ("deny", CONSENT_REQUIRED)

    def test_a_consent_covers_only_the_actions_its_terms_name(self) -> None:
        """An agreement given another action after the citizen consented releases nothing
        under that consent for the new action; a consent whose terms name no action
        releases nothing at all."""
        widened = agreement("licence-with-consent", basis="consent", actions=("read", "verify", "history"))
        compiled = policy(widened)
        terms = (widened.id, "welfare", "benefit-eligibility", ["licence_status"])
        given = context(consents=consented(*terms, ["verify"]))
        [decision] = compiled.decide("welfare", "verify", ["licence_status"], given).values()
        assert decision.effect == "permit"
        for action in ("read", "history"):
            [decision] = compiled.decide("welfare", action, ["licence_status"], given).values()
            assert (decision.effect, decision.reason) == ("deny", CONSENT_REQUIRED)
            [explained] = compiled.explain("welfare", action, ["licence_status"], given).values()
            assert explained.near_misses[0].reason == (
                f"consent-required: the citizen's consent to agreement {widened.id} was given to terms "
                f"that do not cover {action}"
            )
        assert consented(*terms, []) == frozenset()
        for action in ("read", "verify", "history"):
            [decision] = compiled.decide("welfare", action, ["licence_status"], context()).values()
            assert (decision.effect, decision.reason) == ("deny", CONSENT_REQUIRED)

    def test_explain_names_the_missing_consent(self) -> None:
        [explained] = policy(CONSENT).explain("welfare", "read", ["licence_status"], context()).values()
        [miss] = explained.near_misses
        assert miss.agreement == CONSENT.id
        assert miss.reason == f"consent-required: agreement {CONSENT.id} needs the citizen's active consent"

    def test_objectable_grant_applies_until_the_citizen_objects(self) -> None:
        compiled = policy(OBJECTABLE)
        [decision] = compiled.decide("welfare", "read", ["licence_status"], context()).values()
        assert decision.effect == "permit"
        objected = context(objections=frozenset({OBJECTABLE.id}))
        [explained] = compiled.explain("welfare", "read", ["licence_status"], objected).values()
        assert (explained.decision.effect, explained.decision.reason) == ("deny", OBJECTED)
        assert (
            explained.near_misses[0].reason == f"objected: the citizen objected to agreement {OBJECTABLE.id}"
        )

    def test_a_statutory_grant_ignores_consent_and_objection(self) -> None:
        statutory = agreement()
        chosen = context(objections=frozenset({statutory.id}))
        [decision] = policy(statutory).decide("welfare", "read", ["licence_status"], chosen).values()
        assert decision.effect == "permit"

    def test_another_grant_still_releases_without_consent(self) -> None:
        compiled = policy(CONSENT, agreement())
        [decision] = compiled.decide("welfare", "read", ["licence_status"], context()).values()
        assert (decision.effect, decision.agreement) == ("permit", "licence-for-welfare")

    def test_other_misses_come_before_the_citizens_choice(self) -> None:
        asked = context("tax-administration", consents=frozenset())
        [decision] = policy(CONSENT).decide("welfare", "read", ["licence_status"], asked).values()
        assert decision.reason.startswith(f"agreement {CONSENT.id} covers benefit-eligibility")

    def test_choices_needed_only_where_such_agreements_grant(self) -> None:
        compiled = policy(CONSENT, OBJECTABLE, agreement("points", fields=("points",)))
        assert compiled.choices_needed("welfare", "read", ["licence_status", "points"]) == {
            CONSENT.id,
            OBJECTABLE.id,
        }
        assert compiled.choices_needed("welfare", "read", ["points"]) == frozenset()
        assert compiled.choices_needed("revenue", "read", ["licence_status"]) == frozenset()


SPEC: dict[str, Any] = {
    "id": "revenue-reads-licence",
    "consumer": "revenue",
    "fields": ["licence_status"],
    "actions": ["read"],
    "purposes": ["tax-administration"],
    "legal_basis": "Finance Act 2008, s.114",
}


class TestLoader:
    def test_basis_is_checked_against_effect_actions_and_purposes(self) -> None:
        catalog = load_catalog(TEST_POLICIES)
        spec = AgreementSpec.model_validate(
            {
                **SPEC,
                "basis": "consent",
                "actions": ["read", "subscribe"],
                "purposes": ["tax-administration", "benefit-eligibility"],
            }
        )
        assert check_agreement(spec, "dvla", catalog) == [
            (
                ("actions", 1),
                "an agreement with basis consent grants only history, read, verify, not subscribe",
            ),
            (("purposes",), "a consent is given to one purpose: name exactly one"),
        ]
        forbid = AgreementSpec.model_validate({**SPEC, "basis": "objectable", "effect": "forbid"})
        assert (("basis",), "only a permit can have basis objectable") in check_agreement(
            forbid, "dvla", catalog
        )


class TestSignedForm:
    def test_a_signature_made_before_basis_existed_still_verifies(self) -> None:
        signer = OwnerSigner.generate("dvla")
        verifier = OwnerVerifier.parse(signer.verifier_key())
        # Signed over the agreement as it was written before ``basis`` existed.
        signature = signer.sign(AgreementSpec.model_validate(SPEC).content())
        for written in (SPEC, {**SPEC, "basis": "statutory"}):
            spec = AgreementSpec.model_validate({**written, "signature": signature})
            assert "basis" not in spec.content()
            assert verifier.problem(spec.content(), "dvla") is None

    def test_changing_the_basis_breaks_the_signature(self) -> None:
        signer = OwnerSigner.generate("dvla")
        verifier = OwnerVerifier.parse(signer.verifier_key())
        signature = signer.sign(AgreementSpec.model_validate(SPEC).content())
        spec = AgreementSpec.model_validate({**SPEC, "basis": "consent", "signature": signature})
        assert spec.content()["basis"] == "consent"
        assert verifier.problem(spec.content(), "dvla") is not None
