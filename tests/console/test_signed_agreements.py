"""The console's agreement editor for a department that signs: the text to sign, a pasted
signature, and refusal of unsigned, wrongly signed and signed-then-edited agreements."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth import service as auth_service
from service.policy import repository as policy_repository
from service.policy import service as policy_service
from service.policy.loader import load_policy_folder
from service.policy.signing import OwnerSigner
from tests.console.fake_backend import FakeBackend, FakeClient
from tests.console.test_backend import sign_in
from tests.policy.test_signing import signed_folder

SECRET = "correct horse battery staple"
CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')
SIGNING_TEXT = re.compile(r'<pre class="code-block" id="signing-text">(.*?)</pre>', re.S)
DRAFT = re.compile(r'name="draft" value="([^"]+)"')

FORM: dict[str, Any] = {
    "id": "points-for-revenue",
    "consumer": "revenue",
    "fields": ["points"],
    "actions": ["read"],
    "purposes": ["tax-administration"],
    "legal_basis": "Finance Act 2008, Sch. 36",
    "effect": "permit",
    "reason": "new",
}


def csrf(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found is not None, page.text[:500]
    return found.group(1)


def signing_text(page: httpx.Response) -> str:
    found = SIGNING_TEXT.search(page.text)
    assert found is not None, page.text[:2000]
    return html.unescape(found.group(1))


@pytest.fixture
async def dvla(session: AsyncSession, tmp_path: Path, client: httpx.AsyncClient) -> OwnerSigner:
    """Signed test policies applied, and a DVLA data owner signed in to the console."""
    folder, signers = signed_folder(tmp_path, "dvla")
    await policy_service.apply_folder(session, load_policy_folder(folder), author="tests", reason="fixture")
    created = await auth_service.create_client(session, department="dvla", roles=["data-owner"])
    assert created.client_secret is not None
    assert (await sign_in(client, created.client_id, created.client_secret)).status_code == 303
    return signers["dvla"]


async def post_form(client: httpx.AsyncClient, **changes: Any) -> httpx.Response:
    page = await client.get("/console/agreements/new")
    return await client.post("/console/agreements/new", data={**FORM, **changes, "csrf_token": csrf(page)})


class TestSignedEditor:
    async def test_the_form_asks_for_a_signature(self, client: httpx.AsyncClient, dvla: OwnerSigner) -> None:
        page = await client.get("/console/agreements/new")
        assert 'id="signature"' in page.text
        assert "the text to sign is shown here" in page.text

    async def test_unsigned_is_refused_and_shows_the_text_to_sign(
        self, client: httpx.AsyncClient, dvla: OwnerSigner
    ) -> None:
        refused = await post_form(client)
        assert refused.status_code == 422
        assert "Unsigned: dvla has a signing key" in refused.text
        text = signing_text(refused)
        assert '"owner":"dvla"' in text
        assert '"signature"' not in text

    async def test_a_pasted_signature_is_saved_and_compiled(
        self, client: httpx.AsyncClient, dvla: OwnerSigner, session: AsyncSession
    ) -> None:
        text = signing_text(await post_form(client))
        signature = base64.b64encode(dvla.sign_text(text)).decode()
        simulated = await post_form(client, signature=signature)
        assert simulated.status_code == 200, simulated.text[:2000]
        draft = DRAFT.search(simulated.text)
        assert draft is not None
        saved = await client.post(
            "/console/agreements/new",
            data={
                "step": "save",
                "draft": html.unescape(draft.group(1)),
                "reason": "new",
                "csrf_token": csrf(simulated),
            },
        )
        assert saved.status_code == 303, saved.text[:2000]
        row = await policy_repository.current_version(session, "points-for-revenue")
        assert row is not None
        assert row.content["signature"] == signature
        snapshot = await policy_service.compile_snapshot(await session.connection(), 99)
        assert snapshot.refused == ()
        assert "points-for-revenue" in {a.id for a in snapshot.policy.agreements}

    async def test_a_wrong_signature_is_refused(self, client: httpx.AsyncClient, dvla: OwnerSigner) -> None:
        text = signing_text(await post_form(client))
        impostor = OwnerSigner.generate("dvla")
        refused = await post_form(client, signature=base64.b64encode(impostor.sign_text(text)).decode())
        assert refused.status_code == 422
        assert "does not verify" in refused.text

    async def test_signed_then_edited_is_refused(self, client: httpx.AsyncClient, dvla: OwnerSigner) -> None:
        text = signing_text(await post_form(client))
        signature = base64.b64encode(dvla.sign_text(text)).decode()
        refused = await post_form(
            client, signature=signature, purposes=["tax-administration", "fraud-investigation"]
        )
        assert refused.status_code == 422
        assert "does not verify" in refused.text


class TestUnsignedDepartment:
    async def test_no_signature_field_and_unsigned_is_fine(
        self, client: httpx.AsyncClient, session: AsyncSession, tmp_path: Path
    ) -> None:
        folder, _signers = signed_folder(tmp_path, "dvla")
        await policy_service.apply_folder(session, load_policy_folder(folder), author="tests", reason="f")
        created = await auth_service.create_client(session, department="revenue", roles=["data-owner"])
        assert created.client_secret is not None
        await sign_in(client, created.client_id, created.client_secret)
        page = await client.get("/console/agreements/new")
        assert 'id="signature"' not in page.text
        data = {
            **FORM,
            "id": "self-employed-for-welfare",
            "consumer": "welfare",
            "fields": ["self_employed"],
            "purposes": ["benefit-eligibility"],
            "csrf_token": csrf(page),
        }
        simulated = await client.post("/console/agreements/new", data=data)
        assert simulated.status_code == 200, simulated.text[:2000]


class TestReleasesPage:
    async def test_an_owner_with_a_key_is_offered_the_check(
        self, client: httpx.AsyncClient, dvla: OwnerSigner
    ) -> None:
        page = await client.get("/console/releases")
        assert page.status_code == 200
        assert dvla.verifier_key() in page.text
        assert "Check every release now" in page.text


class TestReleasesCheck:
    async def test_the_check_needs_the_token_and_shows_the_summary(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        fake = FakeBackend(clients={"owner-1": FakeClient(SECRET, "register", ("data-owner",))})
        app.state.console_backend = fake
        await sign_in(client, "owner-1", SECRET)
        assert (await client.post("/console/releases/check")).status_code == 403
        page = await client.get("/console/releases")
        done = await client.post("/console/releases/check", data={"csrf_token": csrf(page)})
        assert done.status_code == 200
        assert "0 releases of register&#39;s fields checked" in done.text
