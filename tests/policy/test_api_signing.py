"""The policy API with owner signatures: unsigned, wrongly signed and edited agreements are 422."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from service.policy import repository as policy_repository
from service.policy import service as policy_service
from service.policy.loader import load_policy_folder
from service.policy.schemas import AgreementSpec
from service.policy.signing import OwnerSigner
from service.sourcefile import SourceFileError
from tests.fixtures.auth import act_as
from tests.policy.test_api import assert_problem
from tests.policy.test_signing import signed_folder

NEW_AGREEMENT: dict[str, Any] = {
    "id": "points-for-revenue",
    "consumer": "revenue",
    "fields": ["points"],
    "actions": ["read"],
    "purposes": ["tax-administration"],
    "legal_basis": "Finance Act 2008, Sch. 36",
}


@pytest.fixture
async def dvla_signer(session: AsyncSession, tmp_path: Path) -> OwnerSigner:
    """The test policies with DVLA holding a signing key and its agreements signed."""
    folder, signers = signed_folder(tmp_path, "dvla")
    await policy_service.apply_folder(session, load_policy_folder(folder), author="tests", reason="fixture")
    return signers["dvla"]


def assert_signature_refused(response: httpx.Response, fragment: str) -> None:
    body = assert_problem(response, 422, "validation-failed")
    assert body["errors"] == [{"loc": ["body", "signature"], "msg": body["errors"][0]["msg"]}]
    assert fragment in body["errors"][0]["msg"]


class TestCreateSigned:
    async def test_unsigned_is_422(
        self, app: FastAPI, client: httpx.AsyncClient, dvla_signer: OwnerSigner
    ) -> None:
        act_as(app, "dvla", "data-owner")
        assert_signature_refused(await client.post("/v1/policies", json=NEW_AGREEMENT), "unsigned")
        assert (await client.get("/v1/policies/points-for-revenue")).status_code == 404

    async def test_wrongly_signed_is_422(
        self, app: FastAPI, client: httpx.AsyncClient, dvla_signer: OwnerSigner
    ) -> None:
        act_as(app, "dvla", "data-owner")
        impostor = OwnerSigner.generate("dvla")
        response = await client.post("/v1/policies", json=impostor.signed(NEW_AGREEMENT))
        assert_signature_refused(response, "does not verify")

    async def test_signed_then_edited_is_422(
        self, app: FastAPI, client: httpx.AsyncClient, dvla_signer: OwnerSigner
    ) -> None:
        act_as(app, "dvla", "data-owner")
        edited = {
            **dvla_signer.signed(NEW_AGREEMENT),
            "purposes": ["tax-administration", "fraud-investigation"],
        }
        assert_signature_refused(await client.post("/v1/policies", json=edited), "does not verify")

    async def test_signed_is_stored_with_its_signature_and_decides(
        self, app: FastAPI, client: httpx.AsyncClient, dvla_signer: OwnerSigner
    ) -> None:
        act_as(app, "dvla", "data-owner")
        signed = dvla_signer.signed(NEW_AGREEMENT)
        response = await client.post("/v1/policies", json=signed)
        assert response.status_code == 201, response.text
        assert response.json()["signature"] == signed["signature"]
        explained = await client.post(
            "/v1/decisions/explain",
            json={
                "consumer": "revenue",
                "action": "read",
                "fields": ["points"],
                "purpose": "tax-administration",
            },
        )
        decision = explained.json()["decisions"]["points"]
        assert decision["effect"] == "permit"
        assert decision["agreement"] == "points-for-revenue"

    async def test_a_department_without_a_key_works_unsigned(
        self, app: FastAPI, client: httpx.AsyncClient, dvla_signer: OwnerSigner
    ) -> None:
        act_as(app, "revenue", "data-owner")
        unsigned = {**NEW_AGREEMENT, "id": "self-employed-for-welfare", "consumer": "welfare"}
        unsigned |= {"fields": ["self_employed"], "purposes": ["benefit-eligibility"]}
        response = await client.post("/v1/policies", json=unsigned)
        assert response.status_code == 201, response.text


class TestReplaceAndRevokeSigned:
    async def test_put_needs_a_fresh_signature_and_delete_needs_none(
        self, app: FastAPI, client: httpx.AsyncClient, dvla_signer: OwnerSigner
    ) -> None:
        act_as(app, "dvla", "data-owner")
        path = "/v1/policies/licence-for-revenue"
        current = (await client.get(path)).json()
        body = {
            k: v
            for k, v in current.items()
            if k not in {"owner", "version", "status", "author", "created_at"}
        }
        body["reason"] = "extended"
        body["valid_until"] = "2030-01-01"
        # The old signature no longer covers the new text.
        assert_signature_refused(
            await client.put(path, json=body, headers={"If-Match": '"1"'}), "does not verify"
        )
        # What is signed is the agreement as stored: fields at their default are left out.
        spec = AgreementSpec.model_validate(
            {k: v for k, v in body.items() if k not in {"reason", "signature"}}
        )
        resigned = {**dvla_signer.signed(spec.content()), "reason": "extended"}
        replaced = await client.put(path, json=resigned, headers={"If-Match": '"1"'})
        assert replaced.status_code == 200, replaced.text
        assert replaced.json()["version"] == 2
        # An owner may always narrow: revocation carries no signature.
        revoked = await client.delete(path)
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["status"] == "revoked"

    async def test_a_revoked_agreements_old_signature_does_not_bring_it_back(
        self, app: FastAPI, client: httpx.AsyncClient, dvla_signer: OwnerSigner
    ) -> None:
        """A data-owner client holding the old signed text, but not the key, cannot undo a
        revocation; the owner reinstates by signing anew, with a change."""
        act_as(app, "dvla", "data-owner")
        signed = dvla_signer.signed(NEW_AGREEMENT)
        assert (await client.post("/v1/policies", json=signed)).status_code == 201
        path = f"/v1/policies/{NEW_AGREEMENT['id']}"
        assert (await client.delete(path)).status_code == 200
        replayed = await client.put(path, json={**signed, "reason": "back"}, headers={"If-Match": '"2"'})
        assert_signature_refused(replayed, "sign it anew")
        assert (await client.get(path)).json()["status"] == "revoked"
        resigned = dvla_signer.signed({**NEW_AGREEMENT, "valid_from": "2026-12-06"})
        back = await client.put(path, json={**resigned, "reason": "back"}, headers={"If-Match": '"2"'})
        assert back.status_code == 200, back.text
        assert (back.json()["status"], back.json()["version"]) == ("active", 3)

    async def test_applying_a_revoked_signed_agreement_again_is_refused_at_its_line(
        self, session: AsyncSession, tmp_path: Path
    ) -> None:
        folder, _signers = signed_folder(tmp_path, "dvla")
        await policy_service.apply_folder(session, load_policy_folder(folder), author="tests", reason="first")
        row = await policy_repository.current_version(session, "licence-for-revenue")
        assert row is not None
        await policy_service.revoke(session, row, author="tests", reason="ended")
        with pytest.raises(SourceFileError) as refused:
            await policy_service.apply_folder(
                session, load_policy_folder(folder), author="tests", reason="again"
            )
        [error] = refused.value.errors
        assert Path(error.file).name == "dvla.yaml"
        assert error.line > 0
        assert "licence-for-revenue" in error.message
        assert "sign it anew" in error.message

    async def test_simulating_an_unsigned_draft_is_allowed(
        self, app: FastAPI, client: httpx.AsyncClient, dvla_signer: OwnerSigner
    ) -> None:
        act_as(app, "dvla", "data-owner")
        response = await client.post("/v1/policies/simulate", json={"upsert": [NEW_AGREEMENT]})
        assert response.status_code == 200, response.text
