"""check-releases re-decides a release under a consent with the actions the consent's
logged terms name: an agreement widened to another action after the citizen consented
justifies no release of that action under the old consent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.audit.releases import ReleaseChecker
from service.audit.schemas import Reason, canonical_json
from service.policy.schemas import AgreementSpec
from service.policy.service import agreements_from_rows
from service.policy.signing import OwnerSigner, OwnerVerifier, version_text
from tests.fixtures.audit import make_entry

OWNER = "dvla"
SIGNER = OwnerSigner.generate(OWNER)
CATALOG = {
    "departments": [{"id": OWNER}, {"id": "welfare"}],
    "purposes": [{"id": "benefit-eligibility"}],
    "fields": [{"name": "points", "owner": OWNER}],
}
AGREEMENT = "welfare-uses-points-with-consent"
START = datetime(2026, 6, 1, tzinfo=UTC)
CITIZEN = "3f2c1d9e-0000-4000-8000-000000000001"


def _content(actions: list[str]) -> dict[str, Any]:
    spec = AgreementSpec.model_validate(
        {
            "id": AGREEMENT,
            "consumer": "welfare",
            "fields": ["points"],
            "actions": actions,
            "purposes": ["benefit-eligibility"],
            "legal_basis": "The citizen's consent",
            "basis": "consent",
        }
    )
    return SIGNER.signed(spec.content())


def _entry(n: int, **values: Any) -> dict[str, Any]:
    """The ``n``-th entry, as the audit stores it; a policy change unless said otherwise."""
    values = {"action": "policy-change", "time": (START + timedelta(minutes=n)).isoformat(), **values}
    return make_entry(**values).to_record()


class Log:
    """A log fed to the checker as the service writes it: the catalog, then entries."""

    def __init__(self) -> None:
        self.checker = ReleaseChecker(OWNER, OwnerVerifier.parse(SIGNER.verifier_key(), OWNER))
        self.leaf = 0
        self.digests: dict[int, str] = {}
        self.checker.add(0, "catalog", _entry(0, action="catalog-change", document=canonical_json(CATALOG)))

    def add(self, **values: Any) -> int:
        self.leaf += 1
        self.checker.add(self.leaf, f"entry {self.leaf}", _entry(self.leaf, **values))
        return self.leaf

    def agreement(self, version: int, actions: list[str]) -> None:
        content = _content(actions)
        [live] = agreements_from_rows(
            [(AGREEMENT, OWNER, version, "active", content)], {OWNER: SIGNER.verifier_key()}
        )
        self.digests[version] = live.digest
        reason = Reason(field="", effect="active", agreement=AGREEMENT, version=version, digest=live.digest)
        self.add(reasons=[reason.model_dump()], document=version_text(content, OWNER))

    def consent(self, version: int, terms: dict[str, Any]) -> None:
        """The citizen consents while ``version`` is in force; ``terms`` as logged."""
        document = {
            "agreement": AGREEMENT,
            "owner": OWNER,
            "consumer": "welfare",
            "purpose": "benefit-eligibility",
            "fields": ["points"],
            "expires_at": None,
            **terms,
        }
        reason = {"field": "", "effect": "active", "agreement": AGREEMENT, "version": version, "reason": "x"}
        self.add(
            action="consent-change",
            department="portal",
            client_id="portal-client",
            citizen_id=CITIZEN,
            reasons=[reason],
            purpose="benefit-eligibility",
            document=canonical_json(document),
        )

    def release(self, action: str, version: int) -> int:
        """``action`` on points released to welfare, citing ``version``."""
        return self.add(
            action=action,
            department="welfare",
            client_id="welfare-client",
            citizen_id=CITIZEN,
            owners=[OWNER],
            fields_requested=["points"],
            fields_released=["points"],
            reasons=[
                {
                    "field": "points",
                    "effect": "permit",
                    "agreement": AGREEMENT,
                    "version": version,
                    "digest": self.digests[version],
                    "reason": "permitted",
                }
            ],
            purpose="benefit-eligibility",
            citizen_status="active",
        )

    def unjustified(self) -> set[int]:
        return {u.leaf_index for u in self.checker.finish().unjustified}


def _widened_after(terms: dict[str, Any]) -> tuple[Log, int, int]:
    """Consent given to version 1 (verify only), the agreement widened to read as version
    2, then a read and a verify released under version 2."""
    log = Log()
    log.agreement(1, ["verify"])
    log.consent(1, terms)
    log.agreement(2, ["read", "verify"])
    return log, log.release("read", 2), log.release("verify", 2)


class TestConsentActionsReDecided:
    def test_a_read_the_logged_terms_do_not_name_is_unjustified(self) -> None:
        log, read, verify = _widened_after({"actions": ["verify"]})
        assert log.unjustified() == {read}
        assert verify not in log.unjustified()

    def test_the_logged_terms_decide_not_the_version_they_cite(self) -> None:
        """Terms naming read justify the read even though version 1 did not grant it:
        the terms the citizen consented to are what count."""
        log, _read, _verify = _widened_after({"actions": ["read", "verify"]})
        assert log.unjustified() == set()

    @pytest.mark.parametrize("actions", [[], None, "read"])
    def test_terms_naming_no_action_justify_nothing(self, actions: Any) -> None:
        log, read, verify = _widened_after({"actions": actions})
        assert log.unjustified() == {read, verify}

    def test_terms_logged_before_actions_were_named_cover_the_cited_versions(self) -> None:
        """A consent logged before its terms named actions covers those of the agreement
        version its entry cites, as migration 0020 filled in the stored consent."""
        log, read, verify = _widened_after({})
        assert log.unjustified() == {read}
        assert verify not in log.unjustified()

    def test_terms_logged_before_actions_citing_an_unknown_version_cover_nothing(self) -> None:
        log = Log()
        log.agreement(1, ["read", "verify"])
        log.consent(7, {})
        read = log.release("read", 1)
        assert log.unjustified() == {read}
