"""The console's real backend: sign-in through the auth domain, drafts through the policy rules."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth import service as auth_service
from service.auth.dependencies import Principal
from service.console.backend import DomainBackend
from service.policy import service as policy_service
from service.policy.schemas import AgreementSpec

CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')
OWNER = Principal.with_roles("register-owner", "register", "data-owner")


async def sign_in(client: httpx.AsyncClient, client_id: str, secret: str) -> httpx.Response:
    form = await client.get("/console/sign-in")
    found = CSRF.search(form.text)
    assert found is not None
    data = {"csrf_token": found.group(1), "client_id": client_id, "client_secret": secret}
    return await client.post("/console/sign-in", data=data)


@pytest.mark.usefixtures("catalog_loaded")
class TestSignInWithClients:
    async def test_a_data_owner_signs_in(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        created = await auth_service.create_client(session, department="register", roles=["data-owner"])
        assert created.client_secret is not None
        response = await sign_in(client, created.client_id, created.client_secret)
        assert response.status_code == 303
        assert (await client.get("/console")).status_code == 200

    async def test_unknown_client_and_wrong_secret_look_the_same(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        created = await auth_service.create_client(session, department="register", roles=["auditor"])
        wrong = await sign_in(client, created.client_id, "not-the-secret")
        unknown = await sign_in(client, "tc_nobody", "not-the-secret")
        assert wrong.status_code == unknown.status_code == 401
        message = "The client ID or client secret is not right"
        assert message in wrong.text
        assert message in unknown.text

    async def test_a_disabled_client_is_refused(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        created = await auth_service.create_client(session, department="register", roles=["data-owner"])
        assert created.client_secret is not None
        await auth_service.disable_client(session, created.client_id)
        response = await sign_in(client, created.client_id, created.client_secret)
        assert response.status_code == 401
        assert "This client has been disabled" in response.text

    async def test_disabling_a_signed_in_client_signs_it_out(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        created = await auth_service.create_client(session, department="register", roles=["data-owner"])
        assert created.client_secret is not None
        await sign_in(client, created.client_id, created.client_secret)
        await auth_service.disable_client(session, created.client_id)
        assert (await client.get("/console")).status_code == 303

    @pytest.mark.parametrize("roles", [["consumer"], ["writer", "registrar"], ["admin"]])
    async def test_other_roles_are_refused(
        self, client: httpx.AsyncClient, session: AsyncSession, roles: list[str]
    ) -> None:
        created = await auth_service.create_client(session, department="welfare", roles=roles)
        assert created.client_secret is not None
        response = await sign_in(client, created.client_id, created.client_secret)
        assert response.status_code == 403
        assert "cannot sign in to the console" in response.text


VALID: dict[str, Any] = {
    "id": "address-for-welfare",
    "consumer": "welfare",
    "fields": ["address"],
    "actions": ["read"],
    "purposes": ["benefit-eligibility"],
    "legal_basis": "Social Security Administration Act 1992, s.122",
}


@pytest.mark.usefixtures("catalog_loaded")
class TestDraftsFollowThePolicyRules:
    async def test_a_valid_draft_is_the_stored_form(self, session: AsyncSession) -> None:
        checked = await DomainBackend().check_draft(session, OWNER, dict(VALID), creating=True)
        assert checked.errors == []
        assert checked.content == AgreementSpec.model_validate(VALID).content()

    @pytest.mark.parametrize(
        ("change", "field", "message"),
        [
            ({"id": "Not An Id"}, "id", "The agreement ID must be lower-case letters"),
            ({"fields": []}, "fields", "Choose at least one field"),
            (
                {"fields": ["licence_status"]},
                "fields",
                "Register does not own field 'licence_status' (owner: dvla)",
            ),
            ({"purposes": ["astrology"]}, "purposes", "Unknown purpose 'astrology'"),
            ({"legal_basis": None}, "legal_basis", "A permit needs a legal basis"),
            ({"consumer": "register"}, "consumer", "An owner needs no agreement with itself"),
            (
                {"valid_from": "2027-01-01", "valid_until": "2026-01-01"},
                "valid_until",
                "is before the start date",
            ),
            ({"valid_until": "2027-02-30"}, "valid_until", "The valid until date must be a real date"),
            ({"when": "citizen.status =="}, "when", "Invalid condition"),
        ],
    )
    async def test_each_problem_lands_on_its_field(
        self, session: AsyncSession, change: dict[str, Any], field: str, message: str
    ) -> None:
        draft = {key: value for key, value in (VALID | change).items() if value is not None}
        checked = await DomainBackend().check_draft(session, OWNER, draft, creating=True)
        assert checked.content is None
        assert [name for name, _ in checked.errors] == [field]
        assert message in checked.errors[0][1]

    async def test_every_problem_is_reported_at_once(self, session: AsyncSession) -> None:
        # A bad ID (the form's own check) and catalog problems come back together, in words.
        draft = {key: value for key, value in VALID.items() if key != "legal_basis"}
        draft |= {"id": "Not An Id", "purposes": ["astrology"], "valid_until": "2027-02-30"}
        checked = await DomainBackend().check_draft(session, OWNER, draft, creating=True)
        assert checked.content is None
        assert sorted(name for name, _ in checked.errors) == ["id", "legal_basis", "purposes", "valid_until"]
        assert ("legal_basis", "A permit needs a legal basis") in checked.errors

    async def test_an_id_in_use_is_refused_when_creating_only(self, session: AsyncSession) -> None:
        spec = AgreementSpec.model_validate(VALID)
        await policy_service.put_agreement(session, None, spec, owner="register", author="tests", reason="")
        backend = DomainBackend()
        creating = await backend.check_draft(session, OWNER, dict(VALID), creating=True)
        assert creating.errors == [
            ("id", "An agreement with this ID already exists; IDs are unique across the catalog")
        ]
        editing = await backend.check_draft(session, OWNER, dict(VALID), creating=False)
        assert editing.errors == []
