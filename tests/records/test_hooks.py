"""The audit log also holds policy changes and key operations, and simulate replays it."""

from __future__ import annotations

from typing import Any

from tests.records.conftest import RecordsEnv, as_

AUDITOR = as_("audit-office", "auditor")
WELFARE = as_("welfare", "consumer")


async def entries(env: RecordsEnv, **filters: str) -> list[dict[str, Any]]:
    response = await env.client.get("/v1/audit/entries", params={**filters, "limit": 500}, headers=AUDITOR)
    assert response.status_code == 200, response.text
    return [item["entry"] for item in response.json()["items"]]


class TestAuditedChanges:
    async def test_a_policy_change_through_the_api_is_audited(
        self, committed_records_env: RecordsEnv
    ) -> None:
        agreement = {
            "id": "welfare-reads-points-hook-test",
            "consumer": "welfare",
            "fields": ["points"],
            "actions": ["read"],
            "purposes": ["benefit-eligibility"],
            "legal_basis": "Test Act 2026, s.1",
        }
        created = await committed_records_env.client.post(
            "/v1/policies", json={**agreement, "reason": "hook test"}, headers=as_("dvla", "data-owner")
        )
        assert created.status_code == 201, created.text
        changes = await entries(committed_records_env, action="policy-change")
        mine = [e for e in changes if e["reasons"][0]["agreement"] == "welfare-reads-points-hook-test"]
        assert len(mine) == 1
        assert mine[0]["department"] == "dvla"
        assert mine[0]["reasons"][0]["version"] == 1

    async def test_a_policy_change_from_the_command_line_is_audited(
        self, committed_records_env: RecordsEnv
    ) -> None:
        # committed_records_env applied tests/records/policies with `tellonce policies apply`, whose
        # start wires the hook (the command module connects nothing at import).
        changes = await entries(committed_records_env, action="policy-change")
        assert {e["department"] for e in changes} >= {"register", "dvla", "welfare"}

    async def test_erasure_records_the_key_shredding(self, committed_records_env: RecordsEnv) -> None:
        citizen_id, _ = await committed_records_env.register(given_name="Keyed")
        erased = await committed_records_env.client.delete(
            f"/v1/citizens/{citizen_id}",
            params={"reason": "court-order", "legal_basis": "Court order 2026/17"},
            headers=as_("register", "registrar"),
        )
        assert erased.status_code == 204
        # Appended in the erasure's own transaction: there as soon as the answer is.
        key_entries = await entries(committed_records_env, action="key-operation", citizen_id=citizen_id)
        assert key_entries, "the shredding was not audited"
        assert key_entries[0]["reasons"][0]["reason"].startswith("data_keys.shredded")


class TestSimulateReplaysTheAudit:
    async def test_removing_an_agreement_reports_the_reads_it_would_deny(
        self, committed_records_env: RecordsEnv
    ) -> None:
        citizen_id, _ = await committed_records_env.register(given_name="Sim")
        for _ in range(3):
            read = await committed_records_env.client.get(
                f"/v1/citizens/{citizen_id}",
                params={"fields": "given_name", "purpose": "benefit-eligibility"},
                headers=WELFARE,
            )
            assert read.status_code == 200
        response = await committed_records_env.client.post(
            "/v1/policies/simulate",
            json={"upsert": [], "remove": ["welfare-reads-identity"]},
            headers=AUDITOR,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["evaluated"] >= 3
        change = next(
            c
            for c in body["changes"]
            if c["consumer"] == "welfare"
            and c["field"] == "given_name"
            and c["purpose"] == "benefit-eligibility"
        )
        assert change["before"] == "permit"
        assert change["after"] == "deny"
        assert change["count"] >= 3
        # The live policy is untouched.
        again = await committed_records_env.client.get(
            f"/v1/citizens/{citizen_id}",
            params={"fields": "given_name", "purpose": "benefit-eligibility"},
            headers=WELFARE,
        )
        assert again.status_code == 200
