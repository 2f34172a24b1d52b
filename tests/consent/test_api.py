"""The consent and objection API, and their effect on the consumer's next read."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from service.audit.models import AuditEntryRow
from service.consent import repository as consent_repository
from service.consent.models import Consent
from service.policy.simulate import ListSource, RecordedRequest
from tests.consent.conftest import CONSENTED, OBJECTABLE, PORTAL, REVENUE, ConsentWorld, as_, problem


class TestConsentRequired:
    async def test_consent_based_field_alone_is_403_consent_required(self, world: ConsentWorld) -> None:
        body = problem(await world.read("benefit_status"), 403, "consent-required")
        assert "consent-required" in body["detail"]

    async def test_consent_based_field_is_withheld_beside_released_ones(self, world: ConsentWorld) -> None:
        response = await world.read("benefit_status,address")
        assert response.status_code == 200, response.text
        assert response.json()["withheld"] == [{"field": "benefit_status", "reason": "consent-required"}]
        assert response.json()["fields"]["address"]["value"] == "1 High Street"


class TestConsentLifecycle:
    async def test_every_transition_applies_to_the_next_read(self, world: ConsentWorld) -> None:
        created = await world.consent(data_life="P90D")
        assert created.status_code == 201, created.text
        consent = created.json()
        assert {
            k: consent[k] for k in ("citizen_id", "agreement", "consumer", "purpose", "fields", "status")
        } == {
            "citizen_id": world.citizen_id,
            "agreement": CONSENTED["id"],
            "consumer": "revenue",
            "purpose": "tax-administration",
            "fields": ["benefit_status"],
            "status": "active",
        }
        assert consent["expires_at"] is None
        assert consent["signature"].count(".") == 2
        read = await world.read("benefit_status")
        assert read.status_code == 200, read.text
        assert read.json()["fields"]["benefit_status"]["value"] == "awarded"

        paused = await world.set_status(consent["id"], "paused")
        assert paused.json()["status"] == "paused"
        problem(await world.read("benefit_status"), 403, "consent-required")

        resumed = await world.set_status(consent["id"], "active")
        assert resumed.json()["status"] == "active"
        assert (await world.read("benefit_status")).status_code == 200

        revoked = await world.set_status(consent["id"], "revoked")
        assert revoked.json()["status"] == "revoked"
        problem(await world.read("benefit_status"), 403, "consent-required")

    async def test_a_consent_covers_only_the_terms_it_was_given_to(self, world: ConsentWorld) -> None:
        """The owner changes the agreement's purpose after the citizen consented: the
        consent names the old purpose, so it releases nothing for the new one."""
        assert (await world.consent()).status_code == 201
        assert (await world.read("benefit_status")).status_code == 200
        path = f"/v1/policies/{CONSENTED['id']}"
        owner = as_("welfare", "data-owner")
        changed = {**CONSENTED, "purposes": ["fraud-investigation"], "reason": "a new purpose"}
        replaced = await world.client.put(path, json=changed, headers={**owner, "If-Match": '"1"'})
        assert replaced.status_code == 200, replaced.text
        read = await world.client.get(
            f"/v1/citizens/{world.citizen_id}",
            params={"fields": "benefit_status", "purpose": "fraud-investigation"},
            headers=REVENUE,
        )
        problem(read, 403, "consent-required")
        explained = await world.client.post(
            "/v1/decisions/explain",
            json={
                "consumer": "revenue",
                "action": "read",
                "fields": ["benefit_status"],
                "purpose": "fraud-investigation",
                "citizen_id": world.citizen_id,
            },
            headers=owner,
        )
        assert explained.status_code == 200, explained.text
        [miss] = [
            miss
            for miss in explained.json()["decisions"]["benefit_status"]["near_misses"]
            if miss["agreement"] == CONSENTED["id"]
        ]
        assert miss["reason"] == (
            f"consent-required: the citizen's consent to agreement {CONSENTED['id']} was given to terms "
            "that do not cover revenue using benefit_status for fraud-investigation"
        )

    async def test_revoked_consent_cannot_be_reactivated(self, world: ConsentWorld) -> None:
        consent = (await world.consent()).json()
        await world.set_status(consent["id"], "revoked")
        for status in ("active", "paused"):
            problem(await world.set_status(consent["id"], status), 409, "consent-final")
        problem(await world.read("benefit_status"), 403, "consent-required")
        # A new consent may be given after a revocation.
        assert (await world.consent()).status_code == 201
        assert (await world.read("benefit_status")).status_code == 200

    async def test_expires_by_the_injected_clock(self, world: ConsentWorld) -> None:
        start = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
        world.env.app.state.clock = lambda: start
        consent = (await world.consent(expires_at=(start + timedelta(days=30)).isoformat())).json()
        assert consent["status"] == "active"
        assert (await world.read("benefit_status")).status_code == 200

        world.env.app.state.clock = lambda: start + timedelta(days=30)
        problem(await world.read("benefit_status"), 403, "consent-required")
        listed = await world.env.client.get(f"/v1/citizens/{world.citizen_id}/consents", headers=PORTAL)
        assert [c["status"] for c in listed.json()["items"]] == ["expired"]
        problem(await world.set_status(consent["id"], "active"), 409, "consent-final")
        # An expired consent no longer blocks a new one.
        assert (await world.consent()).status_code == 201

    async def test_a_second_open_consent_is_409(self, world: ConsentWorld) -> None:
        first = (await world.consent()).json()
        problem(await world.consent(), 409, "consent-exists")
        await world.set_status(first["id"], "paused")
        problem(await world.consent(), 409, "consent-exists")

    async def test_list_is_cursor_paged(self, world: ConsentWorld) -> None:
        ids = []
        for _ in range(3):
            consent = (await world.consent()).json()
            await world.set_status(consent["id"], "revoked")
            ids.append(consent["id"])
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
            page = (
                await world.env.client.get(
                    f"/v1/citizens/{world.citizen_id}/consents", params=params, headers=PORTAL
                )
            ).json()
            seen += [c["id"] for c in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(ids)
        problem(
            await world.env.client.get(
                f"/v1/citizens/{world.citizen_id}/consents", params={"cursor": "%%%"}, headers=PORTAL
            ),
            422,
            "invalid-cursor",
        )


class TestConsentRefusals:
    async def test_statutory_and_objectable_agreements_take_no_consent(self, world: ConsentWorld) -> None:
        statutory = await world.consent(agreement="revenue-reads-address-of-living")
        assert "applies by law" in problem(statutory, 422, "not-consent-based")["detail"]
        problem(await world.consent(agreement=OBJECTABLE["id"]), 422, "not-consent-based")
        problem(await world.consent(agreement="no-such-agreement"), 422, "unknown-agreement")

    async def test_unknown_citizen_and_consent_are_404(self, world: ConsentWorld) -> None:
        unknown = await world.env.client.post(
            "/v1/citizens/00000000-0000-0000-0000-000000000000/consents",
            json={"agreement": CONSENTED["id"]},
            headers=PORTAL,
        )
        problem(unknown, 404, "not-found")
        problem(
            await world.set_status("00000000-0000-0000-0000-000000000000", "paused"), 404, "consent-not-found"
        )

    async def test_past_expiry_and_bad_status_are_422(self, world: ConsentWorld) -> None:
        problem(await world.consent(expires_at="2020-01-01T00:00:00Z"), 422, "validation-failed")
        problem(await world.consent(data_life="forever"), 422, "validation-failed")
        consent = (await world.consent()).json()
        problem(await world.set_status(consent["id"], "expired"), 422, "validation-failed")

    async def test_only_the_citizen_portal_may_consent(self, world: ConsentWorld) -> None:
        response = await world.env.client.post(
            f"/v1/citizens/{world.citizen_id}/consents", json={"agreement": CONSENTED["id"]}, headers=REVENUE
        )
        problem(response, 403, "forbidden")


class TestObjections:
    async def test_objection_withholds_from_the_next_read_and_withdrawal_restores(
        self, world: ConsentWorld
    ) -> None:
        before = await world.read("given_name")
        assert before.json()["fields"]["given_name"]["value"] == "Ada"
        path = f"/v1/citizens/{world.citizen_id}/objections/{OBJECTABLE['id']}"
        objected = await world.client.post(path, headers=PORTAL)
        assert objected.status_code == 201, objected.text
        assert objected.json()["consumer"] == "revenue"
        problem(await world.client.post(path, headers=PORTAL), 409, "objection-exists")
        withheld = await world.read("given_name,address")
        assert withheld.json()["withheld"] == [{"field": "given_name", "reason": "objected"}]
        listed = await world.client.get(f"/v1/citizens/{world.citizen_id}/objections", headers=PORTAL)
        assert [o["agreement"] for o in listed.json()["items"]] == [OBJECTABLE["id"]]

        assert (await world.client.delete(path, headers=PORTAL)).status_code == 204
        assert (await world.read("given_name")).json()["fields"]["given_name"]["value"] == "Ada"
        problem(await world.client.delete(path, headers=PORTAL), 404, "objection-not-found")

    async def test_only_objectable_agreements_take_objections(self, world: ConsentWorld) -> None:
        for agreement in (CONSENTED["id"], "revenue-reads-address-of-living"):
            response = await world.client.post(
                f"/v1/citizens/{world.citizen_id}/objections/{agreement}", headers=PORTAL
            )
            problem(response, 422, "not-objectable")
        unknown = await world.client.post(
            f"/v1/citizens/{world.citizen_id}/objections/no-such-agreement", headers=PORTAL
        )
        assert problem(unknown, 422, "unknown-agreement")["errors"] == [
            {"loc": ["path", "agreement"], "msg": "unknown agreement"}
        ]


class TestAudited:
    async def test_every_change_is_audited_without_values(self, world: ConsentWorld) -> None:
        consent = (await world.consent()).json()
        await world.set_status(consent["id"], "paused")
        await world.set_status(consent["id"], "revoked")
        path = f"/v1/citizens/{world.citizen_id}/objections/{OBJECTABLE['id']}"
        await world.client.post(path, headers=PORTAL)
        await world.client.delete(path, headers=PORTAL)
        conn = world.env.audit.conn  # type: ignore[union-attr]
        rows = await conn.execute(
            select(AuditEntryRow.canonical)
            .where(
                AuditEntryRow.citizen_id == world.citizen_id,
                AuditEntryRow.action.in_(["consent-change", "objection-change"]),
            )
            .order_by(AuditEntryRow.id)
        )
        entries = [json.loads(canonical) for (canonical,) in rows]
        assert [(e["action"], e["reasons"][0]["effect"], e["reasons"][0]["agreement"]) for e in entries] == [
            ("consent-change", "active", CONSENTED["id"]),
            ("consent-change", "paused", CONSENTED["id"]),
            ("consent-change", "revoked", CONSENTED["id"]),
            ("objection-change", "objected", OBJECTABLE["id"]),
            ("objection-change", "withdrawn", OBJECTABLE["id"]),
        ]
        assert {tuple(e["owners"]) for e in entries} == {("welfare",), ("register",)}
        assert all(e["department"] == "portal" for e in entries)
        # The consent's signed terms are kept whole in the log; never a field value.
        terms = json.loads(entries[0]["document"])
        assert terms["jti"] == consent["id"]
        assert terms["fields"] == ["benefit_status"]
        assert terms["actions"] == CONSENTED["actions"]
        assert not any("awarded" in json.dumps(e) or "Ada" in json.dumps(e) for e in entries)

    async def test_reading_a_citizens_choices_is_audited(self, world: ConsentWorld) -> None:
        """Which agreements a citizen consented or objected to is about the citizen: each
        listing is an entry naming the citizen and the portal, committed with the answer."""
        await world.consent()
        base = f"/v1/citizens/{world.citizen_id}"
        assert (await world.client.get(f"{base}/consents", headers=PORTAL)).status_code == 200
        assert (await world.client.get(f"{base}/objections", headers=PORTAL)).status_code == 200
        conn = world.env.audit.conn  # type: ignore[union-attr]
        rows = await conn.execute(
            select(AuditEntryRow.canonical)
            .where(AuditEntryRow.action.in_(["consent-list", "objection-list"]))
            .order_by(AuditEntryRow.id)
        )
        entries = [json.loads(canonical) for (canonical,) in rows]
        assert [(e["action"], e["citizen_id"], e["department"], e["decision"]) for e in entries] == [
            ("consent-list", world.citizen_id, "portal", "permit"),
            ("objection-list", world.citizen_id, "portal", "permit"),
        ]
        # A refused listing (an unknown citizen) reveals nothing and is not an access.
        unknown = "00000000-0000-4000-8000-000000000000"
        problem(await world.client.get(f"/v1/citizens/{unknown}/consents", headers=PORTAL), 404, "not-found")
        after = await conn.execute(
            select(AuditEntryRow.id).where(AuditEntryRow.action.in_(["consent-list", "objection-list"]))
        )
        assert len(after.all()) == 2


# Why may revenue read the citizen's benefit status and given name, asked by an auditor.
EXPLAIN_REVENUE_READ: dict[str, Any] = {
    "consumer": "revenue",
    "action": "read",
    "fields": ["benefit_status", "given_name"],
    "purpose": "tax-administration",
}
AUDITOR = as_("audit-office", "auditor")


class TestExplainAndSimulate:
    async def test_explain_names_the_missing_consent_and_the_objection(self, world: ConsentWorld) -> None:
        ask = EXPLAIN_REVENUE_READ
        auditor = AUDITOR
        explained = (await world.client.post("/v1/decisions/explain", json=ask, headers=auditor)).json()
        benefit = explained["decisions"]["benefit_status"]
        assert (benefit["effect"], benefit["reason"]) == ("deny", "consent-required")
        misses = {m["agreement"]: m["reason"] for m in benefit["near_misses"]}
        assert (
            misses[CONSENTED["id"]]
            == f"consent-required: agreement {CONSENTED['id']} needs the citizen's active consent"
        )
        assert explained["decisions"]["given_name"]["effect"] == "permit"

        await world.consent()
        await world.client.post(
            f"/v1/citizens/{world.citizen_id}/objections/{OBJECTABLE['id']}", headers=PORTAL
        )
        for_citizen = {**ask, "citizen_id": world.citizen_id}
        explained = (
            await world.client.post("/v1/decisions/explain", json=for_citizen, headers=auditor)
        ).json()
        assert explained["decisions"]["benefit_status"]["effect"] == "permit"
        name = explained["decisions"]["given_name"]
        assert (name["effect"], name["reason"]) == ("deny", "objected")
        assert (
            name["near_misses"][0]["reason"]
            == f"objected: the citizen objected to agreement {OBJECTABLE['id']}"
        )

    async def test_explaining_with_a_citizens_choices_is_audited(self, world: ConsentWorld) -> None:
        """The answer reveals the citizen's consents and objections: an ``explain`` entry
        names who asked, the citizen, the consumer and each field's decision. Without a
        citizen nothing of one is read, and nothing is audited."""
        ask = EXPLAIN_REVENUE_READ
        auditor = AUDITOR
        conn = world.env.audit.conn  # type: ignore[union-attr]

        async def explained() -> list[dict[str, Any]]:
            query = select(AuditEntryRow.canonical).where(AuditEntryRow.action == "explain")
            rows = await conn.execute(query.order_by(AuditEntryRow.id))
            return [json.loads(canonical) for (canonical,) in rows]

        without = await world.client.post("/v1/decisions/explain", json=ask, headers=auditor)
        assert without.status_code == 200
        assert await explained() == []
        await world.consent()
        for_citizen = {**ask, "citizen_id": world.citizen_id}
        answer = await world.client.post("/v1/decisions/explain", json=for_citizen, headers=auditor)
        assert answer.status_code == 200, answer.text
        (entry,) = await explained()
        assert (entry["citizen_id"], entry["department"], entry["client_id"]) == (
            world.citizen_id,
            "audit-office",
            "audit-office-client",
        )
        assert entry["owners"] == ["register", "welfare"]
        assert entry["fields_requested"] == ["benefit_status", "given_name"]
        assert entry["fields_released"] == []
        assert entry["purpose"] == "tax-administration"
        asked, *decided = entry["reasons"]
        assert asked["reason"] == "as revenue would read"
        assert [(r["field"], r["effect"]) for r in decided] == [
            ("benefit_status", "permit"),
            ("given_name", "permit"),
        ]
        assert "Ada" not in json.dumps(entry)
        assert "awarded" not in json.dumps(entry)

    async def test_simulate_counts_what_consent_would_withhold(self, world: ConsentWorld) -> None:
        other, _ = await world.env.register(given_name="Bo")
        asked = [
            ("benefit_status", world.citizen_id),
            ("given_name", world.citizen_id),
            ("given_name", other),
        ]
        world.env.app.state.recorded_requests = ListSource(
            tuple(
                RecordedRequest(
                    consumer="revenue",
                    action="read",
                    fields=(name,),
                    purpose="tax-administration",
                    case_ref=None,
                    citizen_status="active",
                    time=datetime.now(UTC),
                    citizen_id=citizen_id,
                )
                for name, citizen_id in asked
            )
        )
        await world.consent()
        # Names too would need consent: only the citizen without a consent to that loses them.
        draft = {"upsert": [{**OBJECTABLE, "basis": "consent"}]}
        simulated = await world.client.post(
            "/v1/policies/simulate", json=draft, headers=as_("register", "data-owner")
        )
        assert simulated.status_code == 200, simulated.text
        body = simulated.json()
        # The request for welfare's benefit_status is not the register's to see: not replayed.
        assert body["evaluated"] == 2
        assert body["changes"] == [
            {
                "consumer": "revenue",
                "field": "given_name",
                "action": "read",
                "purpose": "tax-administration",
                "before": "permit",
                "after": "deny",
                "count": 2,
            }
        ]
        assert body["withheld_by_choice"] == {"consent-required": 2}


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


class TestWhatReachesTheStore:
    """Input the store cannot keep is refused as a 4xx before it gets there."""

    async def test_an_expiry_past_the_last_instant_in_utc_is_422(self, world: ConsentWorld) -> None:
        body = problem(await world.consent(expires_at="9999-12-31T23:59:59-12:00"), 422, "validation-failed")
        assert body["errors"] == [{"loc": ["body", "expires_at"], "msg": "out of range"}]
        later = await world.consent(expires_at="9999-12-30T23:59:59-12:00")
        assert later.status_code == 201, later.text

    async def test_an_expiry_before_the_first_instant_in_utc_has_passed(self, world: ConsentWorld) -> None:
        """Year 1 at +01:00 is no instant in UTC either, but it is long past, not too late."""
        body = problem(await world.consent(expires_at="0001-01-01T00:00:00+01:00"), 422, "validation-failed")
        assert body["detail"] == "expires_at has passed."
        assert body["errors"] == [{"loc": ["body", "expires_at"], "msg": "in the past"}]

    @pytest.mark.parametrize(
        "cursor",
        [
            _cursor("2026-11-01T00:00:00|00000000-0000-0000-0000-000000000000"),  # no time zone
            _cursor("9999-12-31T23:59:59-12:00|00000000-0000-0000-0000-000000000000"),  # not in UTC
            _cursor("2026-11-01T00:00:00+00:00|\x00"),
            _cursor("2026-11-01T00:00:00+00:00|" + "a" * 37),
            _cursor("2026-11-01T00:00:00+00:00"),  # no consent id
            _cursor("0001-01-01T00:00:00+14:00|00000000-0000-0000-0000-000000000000"),  # before year 1 in UTC
            "AAAA!!",  # outside the base64url alphabet
        ],
    )
    async def test_a_forged_cursor_is_422(self, world: ConsentWorld, cursor: str) -> None:
        path = f"/v1/citizens/{world.citizen_id}/consents"
        listed = await world.client.get(path, params={"cursor": cursor}, headers=PORTAL)
        problem(listed, 422, "invalid-cursor")

    async def test_a_cursor_the_list_gave_still_pages(self, world: ConsentWorld) -> None:
        first = (await world.consent()).json()
        await world.set_status(first["id"], "revoked")
        second = (await world.consent()).json()
        path = f"/v1/citizens/{world.citizen_id}/consents"
        page = (await world.client.get(path, params={"limit": 1}, headers=PORTAL)).json()
        assert [c["id"] for c in page["items"]] == [first["id"]]
        rest = await world.client.get(
            path, params={"limit": 1, "cursor": page["next_cursor"]}, headers=PORTAL
        )
        assert [c["id"] for c in rest.json()["items"]] == [second["id"]]

    @pytest.mark.parametrize("bad", ["%00", "a%00b", "NOT-A-UUID"])
    async def test_path_ids_outside_their_form_are_422(self, world: ConsentWorld, bad: str) -> None:
        citizen = f"/v1/citizens/{world.citizen_id}"
        for method, path in (
            ("POST", f"/v1/citizens/{bad}/consents"),
            ("GET", f"/v1/citizens/{bad}/consents"),
            ("GET", f"/v1/citizens/{bad}/objections"),
            ("PATCH", f"{citizen}/consents/{bad}"),
            ("POST", f"{citizen}/objections/{bad}"),
            ("DELETE", f"{citizen}/objections/{bad}"),
        ):
            body = {"status": "paused"} if method == "PATCH" else {"agreement": CONSENTED["id"]}
            response = await world.client.request(
                method, path, json=body if method in ("POST", "PATCH") else None, headers=PORTAL
            )
            problem(response, 422, "validation-failed")


class TestConcurrentChanges:
    """A change that checked the store before a concurrent one wrote: answered as if sent
    after it (here 409), never a 500 and never a lost revocation."""

    async def test_an_objection_recorded_after_the_check_is_409(
        self, world: ConsentWorld, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = f"/v1/citizens/{world.citizen_id}/objections/{OBJECTABLE['id']}"
        assert (await world.client.post(path, headers=PORTAL)).status_code == 201

        async def not_yet(*_args: Any) -> bool:
            return False  # the check ran before the other request's objection was written

        monkeypatch.setattr(consent_repository, "has_objection", not_yet)
        problem(await world.client.post(path, headers=PORTAL), 409, "objection-exists")

    async def test_a_resume_never_overwrites_a_revoke_made_after_it_read(
        self, world: ConsentWorld, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        consent = (await world.consent()).json()
        await world.set_status(consent["id"], "paused")
        read = consent_repository.get_consent

        async def revoked_after_the_read(conn: AsyncConnection, citizen_id: str, consent_id: str) -> Any:
            row = await read(conn, citizen_id, consent_id)
            # Another request revokes the consent and commits between this read and the write.
            await conn.execute(update(Consent).where(Consent.id == consent_id).values(status="revoked"))
            return row

        monkeypatch.setattr(consent_repository, "get_consent", revoked_after_the_read)
        # Decided again on the status now stored: revoked, so final, as for a resume sent later.
        problem(await world.set_status(consent["id"], "active"), 409, "consent-final")
        monkeypatch.undo()
        listed = await world.client.get(f"/v1/citizens/{world.citizen_id}/consents", headers=PORTAL)
        assert [c["status"] for c in listed.json()["items"]] == ["revoked"]
        problem(await world.read("benefit_status"), 403, "consent-required")

    async def test_consents_given_at_once_store_one(self, committed_world: ConsentWorld) -> None:
        """A double click in the portal: of grants sent together one is stored and the
        others are 409, so revoking the consent the citizen sees leaves none in force."""
        world = committed_world
        answers = await asyncio.gather(*(world.consent() for _ in range(6)))
        assert sorted(a.status_code for a in answers) == [201, 409, 409, 409, 409, 409], [
            a.text for a in answers
        ]
        for answer in answers:
            if answer.status_code == 409:
                problem(answer, 409, "consent-exists")
        listed = await world.client.get(f"/v1/citizens/{world.citizen_id}/consents", headers=PORTAL)
        (held,) = listed.json()["items"]
        assert held["status"] == "active"
        assert (await world.read("benefit_status")).status_code == 200
        assert (await world.set_status(held["id"], "revoked")).status_code == 200
        problem(await world.read("benefit_status"), 403, "consent-required")
