"""Finding 1: any department's registrar could erase any citizen.

Erasure cannot be undone, so only the department that owns ``national_id`` (the register)
erases, or a department holding an explicit ``erase`` agreement on ``national_id``; every
erasure names a reason and a legal basis, and the audit entry keeps both.
"""

from __future__ import annotations

import pytest

from tests.records.conftest import RecordsEnv, as_
from tests.security.conftest import audit_entries, problem

REGISTER = as_("register", "registrar")
WELFARE_REGISTRAR = as_("welfare", "registrar")
REVENUE_REGISTRAR = as_("revenue", "registrar")
ERASURE = {"reason": "duplicate-record", "legal_basis": "UK GDPR Art. 17(1)(d)"}


async def _still_there(env: RecordsEnv, citizen_id: str) -> None:
    read = await env.client.get(
        f"/v1/citizens/{citizen_id}",
        params={"fields": "given_name", "purpose": "civil-registration"},
        headers=as_("register", "consumer"),
    )
    assert read.status_code == 200, read.text
    assert read.json()["fields"]["given_name"]["value"] == "Kept"


class TestOnlyTheRegisterOrAnEraseAgreementErases:
    async def test_another_departments_registrar_is_refused_and_nothing_is_shredded(
        self, security_env: RecordsEnv
    ) -> None:
        citizen_id, _ = await security_env.register(given_name="Kept")

        refused = await security_env.client.delete(
            f"/v1/citizens/{citizen_id}", params=ERASURE, headers=WELFARE_REGISTRAR
        )

        body = problem(refused, 403)
        assert "national_id" in body["detail"]
        await _still_there(security_env, citizen_id)
        denied = [
            e for e in await audit_entries(security_env, citizen_id=citizen_id) if e["action"] == "erase"
        ]
        assert [(e["department"], e["decision"], e["status"]) for e in denied] == [("welfare", "deny", 403)]

    @pytest.mark.parametrize(
        ("headers", "purpose"),
        [
            pytest.param(WELFARE_REGISTRAR, None, id="another-department"),
            pytest.param(REVENUE_REGISTRAR, "tax-administration", id="an-agreement-for-another-purpose"),
        ],
    )
    async def test_the_refusal_is_the_same_for_a_made_up_id_which_has_no_entry(
        self, security_env: RecordsEnv, headers: dict[str, str], purpose: str | None
    ) -> None:
        """The same 403 tells nothing of whether the citizen exists; the existing citizen's
        refusal is audited, and a made-up id names no citizen and has no entry (as a read's)."""
        citizen_id, _ = await security_env.register(given_name="Kept")
        made_up_id = "00000000-0000-4000-8000-000000000000"
        params = {**ERASURE, "purpose": purpose} if purpose else ERASURE
        real = await security_env.client.delete(f"/v1/citizens/{citizen_id}", params=params, headers=headers)
        made_up = await security_env.client.delete(
            f"/v1/citizens/{made_up_id}", params=params, headers=headers
        )

        assert problem(real, 403) == problem(made_up, 403)
        refused = [
            e for e in await audit_entries(security_env, citizen_id=citizen_id) if e["action"] == "erase"
        ]
        assert [(e["decision"], e["status"]) for e in refused] == [("deny", 403)]
        # Only the auditor's own searches for it (audit-query), never an access.
        searched = await audit_entries(security_env, citizen_id=made_up_id)
        assert {e["action"] for e in searched} <= {"audit-query"}

    async def test_an_erase_agreement_permits_it_for_its_purpose_only(self, security_env: RecordsEnv) -> None:
        citizen_id, _ = await security_env.register(given_name="Kept")

        without_purpose = await security_env.client.delete(
            f"/v1/citizens/{citizen_id}", params=ERASURE, headers=REVENUE_REGISTRAR
        )
        problem(without_purpose, 403)
        wrong_purpose = await security_env.client.delete(
            f"/v1/citizens/{citizen_id}",
            params={**ERASURE, "purpose": "tax-administration"},
            headers=REVENUE_REGISTRAR,
        )
        problem(wrong_purpose, 403)
        await _still_there(security_env, citizen_id)

        erased = await security_env.client.delete(
            f"/v1/citizens/{citizen_id}",
            params={**ERASURE, "purpose": "civil-registration"},
            headers=REVENUE_REGISTRAR,
        )
        assert erased.status_code == 204, erased.text
        entry = next(
            e
            for e in await audit_entries(security_env, citizen_id=citizen_id)
            if e["action"] == "erase" and e["status"] == 204
        )
        assert entry["department"] == "revenue"
        assert entry["reasons"][0]["agreement"] == "revenue-erases-duplicates"
        assert "duplicate-record" in entry["reasons"][0]["reason"]
        assert entry["legal_basis"] == ["UK GDPR Art. 17(1)(d)"]


class TestAnErasureNamesItsReasonAndLegalBasis:
    async def test_without_them_it_is_422_and_nothing_is_shredded(self, security_env: RecordsEnv) -> None:
        citizen_id, _ = await security_env.register(given_name="Kept")
        for params in ({}, {"reason": "duplicate-record"}, {"legal_basis": "UK GDPR Art. 17"}):
            problem(
                await security_env.client.delete(
                    f"/v1/citizens/{citizen_id}", params=params, headers=REGISTER
                ),
                422,
            )
        problem(
            await security_env.client.delete(
                f"/v1/citizens/{citizen_id}",
                params={"reason": "because I said so", "legal_basis": "x"},
                headers=REGISTER,
            ),
            422,
        )
        problem(
            await security_env.client.delete(
                f"/v1/citizens/{citizen_id}",
                params={"reason": "duplicate-record", "legal_basis": "   "},
                headers=REGISTER,
            ),
            422,
        )
        await _still_there(security_env, citizen_id)

    async def test_the_owners_erasure_keeps_both_in_the_audit_entry(self, security_env: RecordsEnv) -> None:
        citizen_id, _ = await security_env.register(given_name="Kept")

        erased = await security_env.client.delete(
            f"/v1/citizens/{citizen_id}",
            params={"reason": "court-order", "legal_basis": "Court order 2026/17"},
            headers=REGISTER,
        )

        assert erased.status_code == 204, erased.text
        entry = next(
            e for e in await audit_entries(security_env, citizen_id=citizen_id) if e["action"] == "erase"
        )
        assert entry["department"] == "register"
        assert entry["legal_basis"] == ["Court order 2026/17"]
        assert "court-order" in entry["reasons"][0]["reason"]
