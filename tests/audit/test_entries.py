"""Every kind of audit entry comes from ``service.audit.entries``; the builders agree."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from service.audit import entries
from service.audit.schemas import AuditEntry, Reason, canonical_json, entry_canonical
from service.audit.writer import (
    FILTER_COLUMNS,
    entry_row,
    entry_values,
    entry_values_for_citizens,
    filter_values,
)
from service.auth.dependencies import Principal
from service.catalog.loader import load_catalog
from service.crypto.keyring import KeyEvent
from service.policy.engine import Decision
from service.policy.service import PolicyChange
from service.policy.terms import format_duration

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
            citizen_status="active",
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
            citizen_status="active",
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
                citizen_status=None,
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


CATALOG_FIELDS = sorted(f.name for f in CATALOG.fields)

# Text as requests bring it: any code point but the lone surrogates, control characters,
# quotes and backslashes included (all of which the canonical form escapes).
_text = st.text(st.characters(codec="utf-8"), max_size=12)
_names = st.lists(_text, max_size=3)
_decisions_drawn = st.lists(
    st.builds(
        Decision,
        field=_text,
        effect=st.sampled_from(["permit", "deny"]),
        agreement=st.none() | _text,
        version=st.none() | st.integers(min_value=0, max_value=2**62),
        reason=_text,
        legal_basis=st.none() | _text,
        digest=st.none() | _text,
        held_for=st.none() | st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=1826)),
    ),
    max_size=3,
)


class TestBuiltEntries:
    """Builders skip validation (``AuditEntry.built``) and the writer skips pydantic's
    serializer and the standard library's encoder: each gives what the slow path gives."""

    def test_built_names_every_field_of_the_entry(self) -> None:
        entry = entries.query_entry(WELFARE, source=None)
        assert set(entry.__dict__) == set(AuditEntry.model_fields)
        assert set((entry.reasons and entry.reasons[0].__dict__) or Reason.model_fields) == set(
            Reason.model_fields
        )

    @settings(max_examples=200, deadline=None)
    @given(
        requested=_names,
        released=_names,
        decided=_decisions_drawn,
        owners=_names,
        client=_text,
        purpose=st.none() | _text,
        status=st.integers(min_value=100, max_value=599),
        time=st.datetimes(timezones=st.just(UTC)),
    )
    def test_a_built_entry_is_its_validated_twin(
        self,
        requested: list[str],
        released: list[str],
        decided: list[Decision],
        owners: list[str],
        client: str,
        purpose: str | None,
        status: int,
        time: datetime,
    ) -> None:
        entry = entries.access_entry(
            action="read",
            time=time,
            request_id="req-1",
            client_id=client,
            department="welfare",
            on_behalf_of=None,
            source=None,
            case_ref=None,
            citizen_id="c-1",
            owners=owners,
            requested=requested,
            released=released,
            decisions=decided,
            purpose=purpose,
            status=status,
        )
        record = entry.to_record()
        assert entry.stored_record() == record
        validated = AuditEntry.model_validate(record)
        assert entry == validated
        assert record == validated.model_dump() == entry.model_dump()
        assert validated.to_record() == record
        assert entry_canonical(record) == canonical_json(record)
        row = entry_row(entry)
        assert row["canonical"] == entry.canonical() == validated.canonical()
        assert row == dict(zip(FILTER_COLUMNS, filter_values(record), strict=True)) | {
            "canonical": row["canonical"]
        }

    def test_equal_decisions_share_one_reason_and_records_copy_it(self) -> None:
        def read(request_id: str) -> AuditEntry:
            return entries.records_access_entry(
                Facts(WELFARE, request_id, None, None),
                "read",
                citizen_id="c-1",
                catalog=CATALOG,
                requested=["licence_status", "points"],
                released=["licence_status"],
                decisions=_decisions(),
                purpose="benefit-eligibility",
                status=200,
            )

        first, second = read("req-a"), read("req-b")
        assert first.reasons[0] is second.reasons[0]
        assert first.reasons == [Reason.model_validate(r.model_dump()) for r in second.reasons]
        record = first.to_record()
        record["reasons"][0]["reason"] = "changed"
        assert second.reasons[0].reason == "permitted"
        assert first.to_record()["reasons"] == second.to_record()["reasons"]

    @settings(max_examples=200, deadline=None)
    @given(
        requested=st.lists(st.sampled_from([*CATALOG_FIELDS, "no-such-field"]), max_size=4) | _names,
        decided=_decisions_drawn,
        citizen=_text,
    )
    def test_reused_parts_give_the_entry_made_from_scratch(
        self, requested: list[str], decided: list[Decision], citizen: str
    ) -> None:
        """Owners, reasons and legal basis are made once per request shape and decision
        objects (``entries._owners``, ``entries._decided_parts``); each entry, first or
        repeated, and after another entry's lists were changed, equals one validated from
        values worked out here, and stores the same row."""
        decisions = {d.field: d for d in decided}
        kept = list(decisions.values())
        expected_record = {
            "time": NOW.isoformat(),
            "request_id": "req-1",
            "client_id": WELFARE.client_id,
            "department": WELFARE.department,
            "on_behalf_of": WELFARE.on_behalf_of,
            "action": "read",
            "citizen_id": citizen,
            "owners": sorted({f.owner for name in requested if (f := CATALOG.field(name)) is not None}),
            "fields_requested": requested,
            "fields_released": requested[:1],
            "decision": entries.summary(requested, requested[:1]),
            "reasons": [
                {
                    "field": d.field,
                    "effect": d.effect,
                    "agreement": d.agreement,
                    "version": d.version,
                    "digest": d.digest,
                    "reason": d.reason,
                    "held_for": format_duration(d.held_for) if d.held_for is not None else None,
                }
                for d in kept
            ],
            "purpose": "benefit-eligibility",
            "case_ref": None,
            "citizen_status": "active",
            "legal_basis": sorted({d.legal_basis for d in kept if d.effect == "permit" and d.legal_basis}),
            "status": 200,
            "source": None,
            "document": None,
        }
        expected = AuditEntry.model_validate(expected_record)
        for _ in range(3):
            entry = entries.records_access_entry(
                Facts(WELFARE, "req-1", None, None),
                "read",
                citizen_id=citizen,
                catalog=CATALOG,
                requested=requested,
                released=requested[:1],
                decisions=decisions,
                purpose="benefit-eligibility",
                status=200,
                decided_at=NOW,
                citizen_status="active",
            )
            assert entry == expected
            assert entry_values(entry) == entry_values(expected)
            assert entry.canonical() == canonical_json(expected_record)
            # An entry's lists are its own: changing them changes no later entry.
            entry.owners.append("changed")
            entry.legal_basis.append("changed")
            entry.reasons.clear()

    def test_the_same_decisions_in_another_order_give_their_reasons_in_that_order(self) -> None:
        decided = list(_decisions().values())
        for order in (decided, decided[::-1], decided):
            entry = entries.events_access_entry(
                action="deliver",
                time=NOW,
                client_id="welfare-app",
                department="welfare",
                citizen_id="c-1",
                owners=["dvla"],
                requested=[d.field for d in order],
                decisions={d.field: d for d in order},
                purpose="benefit-eligibility",
                status=200,
                citizen_status="active",
            )
            assert [r.field for r in entry.reasons] == [d.field for d in order]

    def test_the_record_is_a_copy(self) -> None:
        entry = entries.query_entry(WELFARE, source=None, owners=["dvla"])
        record = entry.to_record()
        record["owners"].append("hmrc")
        assert entry.owners == ["dvla"]

    def test_what_orjson_refuses_gets_the_contracts_answer(self) -> None:
        big = {"version": 2**70, "reason": "x"}
        assert entry_canonical(big) == canonical_json(big)

    @settings(max_examples=100, deadline=None)
    @given(citizen_ids=st.lists(_text, max_size=5), client=_text, requested=_names)
    def test_rows_for_many_citizens_are_each_entrys_own_row(
        self, citizen_ids: list[str], client: str, requested: list[str]
    ) -> None:
        entry = entries.access_entry(
            action="register",
            time=datetime(2026, 12, 2, 13, 0, tzinfo=UTC),
            request_id="import-1",
            client_id=client,
            department="register",
            on_behalf_of=None,
            source=None,
            case_ref=None,
            citizen_id=None,
            owners=["register"],
            requested=requested,
            released=requested,
            decisions=[],
            purpose=None,
            status=201,
        )
        rows = entry_values_for_citizens(entry, citizen_ids)
        assert rows == [
            entry_values(entry.model_copy(update={"citizen_id": citizen_id})) for citizen_id in citizen_ids
        ]

    def test_a_citizen_id_orjson_refuses_gets_the_contracts_row(self) -> None:
        entry = entries.query_entry(WELFARE, source=None, owners=["dvla"])
        odd = "c-\ud800"
        assert entry_values_for_citizens(entry, [odd, "c-2"]) == [
            entry_values(entry.model_copy(update={"citizen_id": odd})),
            entry_values(entry.model_copy(update={"citizen_id": "c-2"})),
        ]
