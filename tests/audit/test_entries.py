"""Every kind of audit entry comes from ``service.audit.entries``; the builders agree."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from service.audit import entries
from service.auth.dependencies import Principal
from service.catalog.loader import load_catalog
from service.crypto.keyring import KeyEvent
from service.policy.engine import Decision
from service.policy.service import PolicyChange

CATALOG = load_catalog(Path(__file__).parents[1] / "fixtures" / "policies")
WELFARE = Principal.with_roles("welfare-app", "welfare", "consumer")
NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Facts:
    principal: Principal
    request_id: str
    source: str | None
    case_ref: str | None


def _decisions() -> dict[str, Decision]:
    return {
        "licence_status": Decision("licence_status", "permit", "lic", 3, "permitted", "Act 1, s.2"),
        "points": Decision("points", "deny", None, None, "no agreement"),
    }


class TestAccessEntries:
    def test_records_entry_names_owners_from_the_catalog_and_the_permitting_basis(self) -> None:
        entry = entries.records_access_entry(
            Facts(WELFARE, "req-1", "10.0.0.1", "CASE-9"),
            "read",
            citizen_id="c-1",
            catalog=CATALOG,
            requested=["licence_status", "points", "address"],
            released=["licence_status"],
            decisions=_decisions(),
            purpose="benefit-eligibility",
            status=200,
        )
        assert entry.owners == ["dvla", "register"]
        assert entry.decision == "partial"
        assert entry.legal_basis == ["Act 1, s.2"]
        assert [r.field for r in entry.reasons] == ["licence_status", "points"]
        assert (entry.client_id, entry.department, entry.case_ref, entry.source) == (
            "welfare-app",
            "welfare",
            "CASE-9",
            "10.0.0.1",
        )

    def test_events_entry_releases_what_is_permitted_as_records_would(self) -> None:
        decisions = _decisions()
        by_events = entries.events_access_entry(
            action="feed",
            time=NOW,
            client_id="welfare-app",
            department="welfare",
            citizen_id="c-1",
            owners=["dvla", "dvla"],
            requested=["licence_status", "points"],
            decisions=decisions,
            purpose="benefit-eligibility",
            status=200,
            request_id="req-2",
        )
        assert by_events.fields_released == ["licence_status"]
        assert by_events.decision == "partial"
        assert by_events.owners == ["dvla"]
        by_records = entries.records_access_entry(
            Facts(WELFARE, "req-2", None, None),
            "feed",
            citizen_id="c-1",
            catalog=CATALOG,
            requested=["licence_status", "points"],
            released=["licence_status"],
            decisions=decisions,
            purpose="benefit-eligibility",
            status=200,
        )
        same = {"time"}
        assert by_events.model_dump(exclude=same) == by_records.model_dump(exclude=same)

    def test_nothing_released_is_a_deny(self) -> None:
        assert entries.summary(["a"], []) == "deny"
        assert entries.summary([], []) == "deny"
        assert entries.summary(["a", "b"], ["a", "b"]) == "permit"

    def test_a_delivery_without_a_request_gets_an_id_of_its_own(self) -> None:
        made = [
            entries.events_access_entry(
                action="deliver",
                time=NOW,
                client_id="welfare-app",
                department="welfare",
                citizen_id="c-1",
                owners=["dvla"],
                requested=["points"],
                decisions=_decisions(),
                purpose="benefit-eligibility",
                status=403,
            )
            for _ in range(2)
        ]
        assert made[0].request_id != made[1].request_id
        assert made[0].decision == "deny"


class TestOtherEntries:
    def test_query_entry_names_the_caller_and_holds_no_fields(self) -> None:
        entry = entries.query_entry(WELFARE, "access-log", source="127.0.0.1", citizen_id="c-1")
        assert (entry.action, entry.client_id, entry.citizen_id, entry.source) == (
            "access-log",
            "welfare-app",
            "c-1",
            "127.0.0.1",
        )
        assert entry.fields_requested == entry.fields_released == []

    def test_policy_change_entry_carries_agreement_version_and_reason(self) -> None:
        change = PolicyChange("lic", "dvla", 4, "revoked", "ab" * 32, "dvla-owner for officer-1", "ended")
        entry = entries.policy_change_entry(change)
        assert (entry.action, entry.client_id, entry.owners) == (
            "policy-change",
            "dvla-owner for officer-1",
            ["dvla"],
        )
        [reason] = entry.reasons
        assert (reason.agreement, reason.version, reason.effect, reason.reason) == (
            "lic",
            4,
            "revoked",
            "ended",
        )

    def test_key_event_entry_names_the_operator_and_the_citizen(self) -> None:
        entry = entries.key_event_entry(
            KeyEvent("data-keys-shredded", "dvla", {"citizen_id": "c-7", "count": 2})
        )
        assert (entry.client_id, entry.citizen_id, entry.owners) == (entries.SERVICE_ACTOR, "c-7", ["dvla"])
        assert entry.reasons[0].reason == "data-keys-shredded: citizen_id=c-7, count=2"
