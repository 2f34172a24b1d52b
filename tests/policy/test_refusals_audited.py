"""A change of an agreement beyond the caller's rights is audited before it is refused: a
``policy-change`` entry with decision ``deny`` and the status answered. Benign refusals
(409, 412, 428, 422) are the owner's own business and write nothing.

Here the refusals are recorded in the test's transaction (``tests/conftest.py``);
``tests/audit/test_releases.py`` runs the app's own path, which commits them on their own.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.errors import AuditUnavailable
from service.audit.models import AuditEntryRow
from service.audit.search import get_audit_access
from service.audit.writer import get_refusal_writer
from tests.fixtures.audit import TransactionAudit
from tests.fixtures.auth import act_as
from tests.policy.test_api import NEW_AGREEMENT, assert_problem

pytestmark = pytest.mark.usefixtures("policies_loaded")

# DVLA's agreement, in force at version 1 (tests/fixtures/policies/dvla.yaml).
DVLA_AGREEMENT = "licence-for-revenue"
DVLA_BODY: dict[str, Any] = {
    "id": DVLA_AGREEMENT,
    "consumer": "revenue",
    "fields": ["licence_status"],
    "actions": ["read"],
    "purposes": ["tax-administration"],
    "legal_basis": "Finance Act 2008, Sch. 36",
}


async def policy_entries(session: AsyncSession, decision: str = "deny") -> list[dict[str, Any]]:
    """The ``policy-change`` entries with ``decision``, in log order, as stored."""
    rows = await session.execute(
        select(AuditEntryRow.canonical)
        .where(AuditEntryRow.action == "policy-change", AuditEntryRow.decision == decision)
        .order_by(AuditEntryRow.id)
    )
    return [json.loads(text) for text in rows.scalars()]


def refusal_reason(agreement: str | None, said: str) -> dict[str, Any]:
    return {
        "field": "",
        "effect": "deny",
        "agreement": agreement,
        "version": None,
        "digest": None,
        "reason": said,
        "held_for": None,
    }


async def not_found_entries(session: AsyncSession, change: str) -> list[dict[str, Any]]:
    """The two deny entries of revenue's owner asking for DVLA's agreement and for an
    unknown one (in that order), each 404 and naming only the id asked for."""
    entries = await policy_entries(session)
    for entry, agreement in zip(entries, (DVLA_AGREEMENT, "no-such-agreement"), strict=True):
        said = f"agreement {agreement} not {change}: revenue has no such agreement"
        assert entry["reasons"] == [refusal_reason(agreement, said)]
        assert (entry["owners"], entry["status"], entry["client_id"]) == (["revenue"], 404, "revenue-owner")
    return entries


class TestAnotherDepartmentsFields:
    async def test_a_create_over_them_is_403_and_one_deny_entry_names_the_agreement_and_departments(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        act_as(app, "dvla", "data-owner", client_id="dvla-owner")
        body = {**NEW_AGREEMENT, "fields": ["points", "tax_code", "given_name"]}
        response = await client.post("/v1/policies", json=body)
        problem = assert_problem(response, 403, "not-field-owner")
        assert (
            problem["detail"]
            == "dvla may grant only its own fields; this covers fields of register, revenue."
        )
        [entry] = await policy_entries(session)
        said = (
            "agreement points-for-revenue not created: "
            "dvla may grant only its own fields; this covers fields of register, revenue"
        )
        assert entry["reasons"] == [refusal_reason("points-for-revenue", said)]
        assert (entry["client_id"], entry["department"], entry["status"]) == ("dvla-owner", "dvla", 403)
        assert entry["owners"] == ["dvla", "register", "revenue"]
        # Departments only: no field, no version, no document.
        assert (entry["fields_requested"], entry["fields_released"], entry["document"]) == ([], [], None)
        assert_problem(await client.get("/v1/policies/points-for-revenue"), 404, "agreement-not-found")

    async def test_a_replacement_over_them_is_403_and_one_deny_entry(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        act_as(app, "dvla", "data-owner", client_id="dvla-owner")
        body = {**DVLA_BODY, "fields": ["licence_status", "tax_code"]}
        response = await client.put(f"/v1/policies/{DVLA_AGREEMENT}", json=body, headers={"If-Match": '"1"'})
        assert_problem(response, 403, "not-field-owner")
        [entry] = await policy_entries(session)
        said = (
            f"agreement {DVLA_AGREEMENT} not replaced: "
            "dvla may grant only its own fields; this covers fields of revenue"
        )
        assert entry["reasons"] == [refusal_reason(DVLA_AGREEMENT, said)]
        assert (entry["owners"], entry["status"]) == (["dvla", "revenue"], 403)
        # Without If-Match the overreach is refused (and audited) all the same, before the 428.
        response = await client.put(f"/v1/policies/{DVLA_AGREEMENT}", json=body)
        assert_problem(response, 403, "not-field-owner")
        assert len(await policy_entries(session)) == 2
        assert (await client.get(f"/v1/policies/{DVLA_AGREEMENT}")).headers["etag"] == '"1"'

    async def test_a_body_id_no_agreement_can_have_is_not_named(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        act_as(app, "dvla", "data-owner")
        # A national id pasted where the agreement's id goes stays out of the log.
        body = {**NEW_AGREEMENT, "id": "AB123456C", "fields": ["tax_code"]}
        assert_problem(await client.post("/v1/policies", json=body), 403, "not-field-owner")
        [entry] = await policy_entries(session)
        said = (
            "agreement (no valid id) not created: "
            "dvla may grant only its own fields; this covers fields of revenue"
        )
        assert entry["reasons"] == [refusal_reason(None, said)]
        assert "AB123456C" not in json.dumps(entry)


class TestAnAgreementTheCallerDoesNotHave:
    @pytest.mark.parametrize(("method", "change"), [("PUT", "replaced"), ("DELETE", "revoked")])
    async def test_another_owners_and_an_unknown_one_are_404_with_entries_that_read_alike(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, method: str, change: str
    ) -> None:
        act_as(app, "revenue", "data-owner", client_id="revenue-owner")
        body = {**DVLA_BODY, "fields": ["tax_code"]}
        for agreement in (DVLA_AGREEMENT, "no-such-agreement"):
            response = await client.request(
                method,
                f"/v1/policies/{agreement}",
                json=body if method == "PUT" else None,
                headers={"If-Match": '"1"'},
            )
            problem = assert_problem(response, 404, "agreement-not-found")
            assert problem["detail"] == f"No agreement {agreement!r}."
        another, unknown = await not_found_entries(session, change)

        def alike(entry: dict[str, Any], agreement: str) -> str:
            rest = {k: v for k, v in entry.items() if k not in ("time", "request_id")}
            return json.dumps(rest, sort_keys=True).replace(agreement, "ID")

        # Only the id asked for tells them apart: nothing says the first one exists.
        assert alike(another, DVLA_AGREEMENT) == alike(unknown, "no-such-agreement")
        act_as(app, "dvla", "data-owner")
        current = (await client.get(f"/v1/policies/{DVLA_AGREEMENT}")).json()
        assert (current["version"], current["status"]) == (1, "active")

    async def test_an_auditor_who_sees_it_but_does_not_own_it_is_403_and_audited(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        act_as(app, "audit-office", "auditor", "data-owner")
        response = await client.delete(f"/v1/policies/{DVLA_AGREEMENT}", headers={"If-Match": '"1"'})
        problem = assert_problem(response, 403, "not-field-owner")
        assert problem["detail"] == "Only the owning department revokes its agreements."
        [entry] = await policy_entries(session)
        said = f"agreement {DVLA_AGREEMENT} not revoked: only its owner, dvla, revokes it"
        assert entry["reasons"] == [refusal_reason(DVLA_AGREEMENT, said)]
        assert (entry["owners"], entry["status"]) == (["audit-office", "dvla"], 403)


class TestBenignRefusals:
    async def test_conflicts_stale_versions_missing_if_match_and_problems_write_nothing(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        act_as(app, "dvla", "data-owner")
        path = f"/v1/policies/{DVLA_AGREEMENT}"
        assert_problem(await client.post("/v1/policies", json=DVLA_BODY), 409, "agreement-exists")
        invalid = {**NEW_AGREEMENT, "purposes": ["astrology"]}
        assert_problem(await client.post("/v1/policies", json=invalid), 422, "validation-failed")
        assert_problem(await client.put(path, json=DVLA_BODY), 428, "if-match-required")
        assert_problem(
            await client.put(path, json=DVLA_BODY, headers={"If-Match": '"7"'}), 412, "stale-agreement"
        )
        mismatch = {**DVLA_BODY, "id": "another-id"}
        assert_problem(
            await client.put(path, json=mismatch, headers={"If-Match": '"1"'}), 422, "validation-failed"
        )
        assert_problem(await client.delete(path, headers={"If-Match": '"7"'}), 412, "stale-agreement")
        nul = await client.delete(path, params={"reason": "a\x00b"}, headers={"If-Match": '"1"'})
        assert_problem(nul, 422, "validation-failed")
        assert (await client.delete(path, headers={"If-Match": '"1"'})).status_code == 200
        assert_problem(await client.delete(path), 409, "agreement-revoked")
        assert await policy_entries(session) == []
        # The one change made is audited as every change is.
        revoked = (await policy_entries(session, "permit"))[-1]["reasons"]
        assert [(r["agreement"], r["version"], r["effect"]) for r in revoked] == [
            (DVLA_AGREEMENT, 2, "revoked")
        ]


class TestTheAuditorSeesThem:
    async def test_the_audit_api_lists_the_refusals_as_policy_changes(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        app.dependency_overrides[get_audit_access] = TransactionAudit(session).access
        act_as(app, "dvla", "data-owner")
        foreign = {**NEW_AGREEMENT, "fields": ["tax_code"]}
        assert (await client.post("/v1/policies", json=foreign)).status_code == 403
        act_as(app, "revenue", "data-owner")
        assert (await client.delete("/v1/policies/no-such-agreement")).status_code == 404
        act_as(app, "audit-office", "auditor")
        response = await client.get("/v1/audit/entries", params={"action": "policy-change"})
        assert response.status_code == 200, response.text
        listed = [item["entry"] for item in response.json()["items"]]
        refused = [(e["department"], e["status"]) for e in listed if e["decision"] == "deny"]
        assert sorted(refused) == [("dvla", 403), ("revenue", 404)]
        denied = await client.get("/v1/audit/entries", params={"action": "policy-change", "decision": "deny"})
        assert len(denied.json()["items"]) == 2


class _FailingAudit:
    """A refusal sink whose storage is down: every append fails."""

    async def append(self, entry: Any) -> int:
        raise AuditUnavailable("The audit trail cannot be written.")


# Asked by revenue's owner about dvla's points, for welfare: neither its fields nor its requests.
FOREIGN_EXPLAIN = {
    "consumer": "welfare",
    "action": "read",
    "fields": ["points"],
    "purpose": "benefit-eligibility",
}


class TestSimulateAndExplainBeyondTheCallersRights:
    async def test_a_simulated_draft_over_another_departments_fields_is_403_and_one_deny_entry(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        act_as(app, "revenue", "data-owner", client_id="revenue-owner")
        response = await client.post("/v1/policies/simulate", json={"upsert": [NEW_AGREEMENT]})
        problem = assert_problem(response, 403, "not-field-owner")
        why = "revenue may grant only its own fields; this covers fields of dvla"
        assert problem["detail"] == f"{why}."
        [entry] = await policy_entries(session)
        said = f"agreement points-for-revenue not simulated: {why}"
        assert entry["reasons"] == [refusal_reason("points-for-revenue", said)]
        assert (entry["client_id"], entry["department"], entry["status"]) == ("revenue-owner", "revenue", 403)
        assert entry["owners"] == ["dvla", "revenue"]
        assert (entry["fields_requested"], entry["fields_released"], entry["document"]) == ([], [], None)

    async def test_removing_an_agreement_the_caller_does_not_have_is_404_and_audited_as_for_a_change(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        # A probe for another owner's agreement ids through simulate's ``remove`` is
        # recorded as one through PUT or DELETE is, and reads the same for an unknown id.
        act_as(app, "revenue", "data-owner", client_id="revenue-owner")
        for agreement in (DVLA_AGREEMENT, "no-such-agreement"):
            response = await client.post("/v1/policies/simulate", json={"remove": [agreement]})
            problem = assert_problem(response, 404, "agreement-not-found")
            assert problem["detail"] == f"No agreement {agreement!r}."
        await not_found_entries(session, "simulated")

    async def test_an_auditors_draft_spanning_two_owners_names_both(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        act_as(app, "audit-office", "auditor")
        draft = {**NEW_AGREEMENT, "fields": ["points", "tax_code"]}
        response = await client.post("/v1/policies/simulate", json={"upsert": [draft]})
        assert_problem(response, 403, "not-field-owner")
        [entry] = await policy_entries(session)
        said = (
            "agreement points-for-revenue not simulated: "
            "dvla may grant only its own fields; this covers fields of revenue"
        )
        assert entry["reasons"] == [refusal_reason("points-for-revenue", said)]
        assert entry["owners"] == ["audit-office", "dvla", "revenue"]

    async def test_an_explain_about_another_departments_fields_is_403_and_one_deny_entry(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        act_as(app, "revenue", "data-owner", client_id="revenue-owner")
        response = await client.post("/v1/decisions/explain", json=FOREIGN_EXPLAIN)
        assert_problem(response, 403, "not-field-owner")
        rows = await session.execute(
            select(AuditEntryRow.canonical)
            .where(AuditEntryRow.action == "explain")
            .order_by(AuditEntryRow.id)
        )
        [entry] = [json.loads(text) for text in rows.scalars()]
        said = (
            "explain as welfare would read refused: "
            "revenue explains decisions on its own fields or for its own department"
        )
        assert entry["reasons"] == [refusal_reason(None, said)]
        assert (entry["decision"], entry["status"], entry["client_id"]) == ("deny", 403, "revenue-owner")
        assert entry["owners"] == ["dvla", "revenue"]
        # What was asked about, by department: no field, no citizen.
        assert (entry["fields_requested"], entry["citizen_id"]) == ([], None)

    async def test_an_explain_for_a_consumer_no_department_is_does_not_name_it(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        act_as(app, "revenue", "data-owner")
        # A reference pasted where the consumer goes stays out of the log.
        body = {**FOREIGN_EXPLAIN, "consumer": "ab123456c"}
        assert_problem(await client.post("/v1/decisions/explain", json=body), 403, "not-field-owner")
        rows = await session.execute(select(AuditEntryRow.canonical).where(AuditEntryRow.action == "explain"))
        [text] = rows.scalars()
        assert "ab123456c" not in text
        assert json.loads(text)["reasons"][0]["reason"].startswith(
            "explain as (an unknown department) would read"
        )

    @pytest.mark.parametrize(
        ("path", "body"),
        [("/v1/policies/simulate", {"upsert": [NEW_AGREEMENT]}), ("/v1/decisions/explain", FOREIGN_EXPLAIN)],
    )
    async def test_without_an_audit_the_answer_is_503(
        self, app: FastAPI, client: httpx.AsyncClient, path: str, body: dict[str, Any]
    ) -> None:
        app.dependency_overrides[get_refusal_writer] = _FailingAudit
        act_as(app, "revenue", "data-owner")
        assert_problem(await client.post(path, json=body), 503, "audit-unavailable")
