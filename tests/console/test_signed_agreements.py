"""The agreement editor for a department that signs: the text to sign and the command that
signs it, a pasted signature, and refusal of unsigned, wrongly signed and signed-then-edited
agreements (at every step, the save of a carried draft included). A department without a
key keeps working unsigned."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth import service as auth_service
from service.auth.dependencies import Principal
from service.policy import agreements
from service.policy import repository as policy_repository
from service.policy import service as policy_service
from service.policy.loader import load_policy_folder
from service.policy.signing import OwnerSigner, signing_text
from service.policy.signing_files import write_private_key
from tests.console.test_real_services import sign_in
from tests.fixtures.audit import TransactionAudit
from tests.policy.test_signing import signed_folder

CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')
SIGNING_TEXT = re.compile(r'<pre class="code-block code-block--wrap" id="signing-text">(.*?)</pre>', re.S)
SIGN_COMMAND = re.compile(r'<pre class="code-block code-block--wrap" id="sign-command">(.*?)</pre>', re.S)
DRAFT = re.compile(r'name="draft" value="([^"]+)"')
SUMMARY = re.compile(r'<div class="error-summary".*?</div>', re.S)

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


def shown(pattern: re.Pattern[str], page: httpx.Response) -> str:
    found = pattern.search(page.text)
    assert found is not None, page.text[:3000]
    return html.unescape(found.group(1))


def error_summary(page: httpx.Response) -> str:
    found = SUMMARY.search(page.text)
    assert found is not None, page.text[:3000]
    return html.unescape(found.group(0))


def signature_of(signer: OwnerSigner, text: str) -> str:
    return base64.b64encode(signer.sign_text(text)).decode()


async def sign_in_as(session: AsyncSession, client: httpx.AsyncClient, department: str) -> None:
    created = await auth_service.create_client(session, department=department, roles=["data-owner"])
    assert created.client_secret is not None
    assert (await sign_in(client, created.client_id, created.client_secret)).status_code == 303


@pytest.fixture
async def dvla(session: AsyncSession, tmp_path: Path, client: httpx.AsyncClient) -> OwnerSigner:
    """The test policies with DVLA signing its agreements, applied; a DVLA data owner signed in."""
    folder, signers = signed_folder(tmp_path, "dvla")
    await policy_service.apply_folder(session, load_policy_folder(folder), author="tests", reason="fixture")
    await sign_in_as(session, client, "dvla")
    return signers["dvla"]


async def post_form(client: httpx.AsyncClient, **changes: Any) -> httpx.Response:
    page = await client.get("/console/agreements/new")
    return await client.post("/console/agreements/new", data={**FORM, **changes, "csrf_token": csrf(page)})


async def save(client: httpx.AsyncClient, simulated: httpx.Response, **draft_changes: Any) -> httpx.Response:
    """The simulate page's save button, with its carried draft changed as a browser could."""
    draft = json.loads(shown(DRAFT, simulated)) | draft_changes
    return await client.post(
        "/console/agreements/new",
        data={"step": "save", "draft": json.dumps(draft), "reason": "new", "csrf_token": csrf(simulated)},
    )


class TestSignedEditor:
    async def test_the_form_asks_for_a_signature(self, client: httpx.AsyncClient, dvla: OwnerSigner) -> None:
        page = await client.get("/console/agreements/new")
        assert page.status_code == 200
        assert 'id="signature"' in page.text
        assert "the text to sign is shown here" in page.text

    async def test_unsigned_is_refused_with_the_text_to_sign(
        self, client: httpx.AsyncClient, dvla: OwnerSigner, session: AsyncSession
    ) -> None:
        refused = await post_form(client)
        assert refused.status_code == 422
        summary = error_summary(refused)
        assert 'href="#signature"' in summary
        assert "Unsigned: dvla has a signing key, so its agreements must carry its signature" in summary
        # The exact text the policy rules verify: the agreement with its owner, no signature.
        text = shown(SIGNING_TEXT, refused)
        assert json.loads(text)["owner"] == "dvla"
        assert "signature" not in json.loads(text)
        assert text == signing_text({k: v for k, v in FORM.items() if k not in ("reason", "effect")}, "dvla")
        assert "tellonce owners sign --key dvla.key" in shown(SIGN_COMMAND, refused)
        assert await policy_repository.current_version(session, "points-for-revenue") is None

    async def test_the_shown_command_prints_the_signature_that_saves(
        self, client: httpx.AsyncClient, dvla: OwnerSigner, session: AsyncSession, tmp_path: Path
    ) -> None:
        key_file = tmp_path / "keys" / "dvla.key"
        key_file.parent.mkdir()
        write_private_key(key_file, dvla)
        command = shown(SIGN_COMMAND, await post_form(client))
        # Run as shown, in the folder holding the key, with this environment's tellonce.
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        signed = subprocess.run(
            ["/bin/sh", "-c", command],
            cwd=key_file.parent,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert signed.returncode == 0, signed.stderr
        simulated = await post_form(client, signature=signed.stdout.strip())
        assert simulated.status_code == 200, error_summary(simulated)
        saved = await save(client, simulated)
        assert saved.status_code == 303, saved.text[:2000]
        row = await policy_repository.current_version(session, "points-for-revenue")
        assert row is not None
        assert row.content["signature"] == signed.stdout.strip()
        snapshot = await policy_service.compile_snapshot(await session.connection(), 99)
        assert snapshot.refused == ()
        assert "points-for-revenue" in {a.id for a in snapshot.policy.agreements}

    async def test_a_wrong_signature_is_refused(
        self, client: httpx.AsyncClient, dvla: OwnerSigner, session: AsyncSession
    ) -> None:
        text = shown(SIGNING_TEXT, await post_form(client))
        impostor = OwnerSigner.generate("dvla")
        refused = await post_form(client, signature=signature_of(impostor, text))
        assert refused.status_code == 422
        assert "The signature does not verify under dvla's signing key" in error_summary(refused)
        garbled = await post_form(client, signature="not base64!")
        assert garbled.status_code == 422
        assert "The signature is not base64" in error_summary(garbled)
        assert await policy_repository.current_version(session, "points-for-revenue") is None

    async def test_signed_then_edited_is_refused_and_shows_the_new_text(
        self, client: httpx.AsyncClient, dvla: OwnerSigner
    ) -> None:
        text = shown(SIGNING_TEXT, await post_form(client))
        widened = ["tax-administration", "fraud-investigation"]
        refused = await post_form(client, signature=signature_of(dvla, text), purposes=widened)
        assert refused.status_code == 422
        assert "edited after signing, or signed by another key" in error_summary(refused)
        new_text = shown(SIGNING_TEXT, refused)
        assert new_text != text
        assert json.loads(new_text)["purposes"] == widened

    async def test_a_draft_edited_after_simulation_is_refused_at_save(
        self, client: httpx.AsyncClient, dvla: OwnerSigner, session: AsyncSession
    ) -> None:
        text = shown(SIGNING_TEXT, await post_form(client))
        simulated = await post_form(client, signature=signature_of(dvla, text))
        assert simulated.status_code == 200, error_summary(simulated)
        refused = await save(client, simulated, purposes=["tax-administration", "fraud-investigation"])
        assert refused.status_code == 422
        assert "does not verify under dvla's signing key" in error_summary(refused)
        assert await policy_repository.current_version(session, "points-for-revenue") is None

    async def test_changing_a_signed_agreement_needs_a_new_signature(
        self, client: httpx.AsyncClient, dvla: OwnerSigner, session: AsyncSession
    ) -> None:
        agreement = "licence-status-for-welfare"
        page = await client.get(f"/console/agreements/{agreement}/edit")
        current = await policy_repository.current_version(session, agreement)
        assert current is not None
        # The stored signature is kept in the form: unchanged, the agreement still verifies.
        assert f'value="{current.content["signature"]}"' in page.text
        form = {
            "expected_version": str(current.version),
            "consumer": "welfare",
            "fields": ["licence_status"],
            "actions": ["read"],
            "purposes": ["benefit-eligibility"],
            "legal_basis": current.content["legal_basis"],
            "when": current.content["when"],
            "effect": "permit",
            "signature": current.content["signature"],
            "reason": "narrowed",
            "csrf_token": csrf(page),
        }
        refused = await client.post(f"/console/agreements/{agreement}/edit", data=form)
        assert refused.status_code == 422
        assert "edited after signing" in error_summary(refused)
        form["signature"] = signature_of(dvla, shown(SIGNING_TEXT, refused))
        simulated = await client.post(f"/console/agreements/{agreement}/edit", data=form)
        assert simulated.status_code == 200, error_summary(simulated)
        saved = await client.post(
            f"/console/agreements/{agreement}/edit",
            data={
                "step": "save",
                "draft": shown(DRAFT, simulated),
                "reason": "narrowed",
                "expected_version": str(current.version),
                "csrf_token": csrf(simulated),
            },
        )
        assert saved.status_code == 303, saved.text[:2000]
        changed = await policy_repository.current_version(session, agreement)
        assert changed is not None
        assert (changed.version, changed.content["fields"]) == (current.version + 1, ["licence_status"])


class TestUnsignedDepartment:
    async def test_a_department_without_a_key_saves_unsigned(
        self, client: httpx.AsyncClient, session: AsyncSession, tmp_path: Path
    ) -> None:
        folder, _signers = signed_folder(tmp_path, "dvla")
        await policy_service.apply_folder(session, load_policy_folder(folder), author="tests", reason="f")
        await sign_in_as(session, client, "revenue")
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
        assert 'id="signing-text"' not in simulated.text
        saved = await save(client, simulated)
        assert saved.status_code == 303, saved.text[:2000]
        row = await policy_repository.current_version(session, "self-employed-for-welfare")
        assert row is not None
        assert "signature" not in row.content


class TestAllowedClaimsKept:
    async def test_changing_an_agreement_keeps_its_allowed_claims(
        self, client: httpx.AsyncClient, session: AsyncSession, tmp_path: Path
    ) -> None:
        folder, _signers = signed_folder(tmp_path, "dvla")
        await policy_service.apply_folder(session, load_policy_folder(folder), author="tests", reason="f")
        owner = Principal.with_roles("register-owner", "register", "data-owner")
        claims = {"date_of_birth": {"lte": ["today-18y"]}}
        body = {
            "id": "age-for-welfare",
            "consumer": "welfare",
            "fields": ["date_of_birth"],
            "actions": ["verify"],
            "purposes": ["benefit-eligibility"],
            "legal_basis": "Social Security Administration Act 1992, s.122",
            "verify": claims,
        }
        await agreements.create_agreement(session, owner, body, audit=TransactionAudit(session))
        await sign_in_as(session, client, "register")
        page = await client.get("/console/agreements/age-for-welfare/edit")
        carried = re.search(r'name="verify" value="([^"]*)"', page.text)
        assert carried is not None, page.text[:3000]
        # The form has no boxes for claims: they ride along unchanged with any other change.
        form = {
            **{k: v for k, v in body.items() if k not in ("id", "verify")},
            "purposes": ["benefit-eligibility", "fraud-investigation"],
            "verify": html.unescape(carried.group(1)),
            "expected_version": "1",
            "reason": "fraud checks too",
            "csrf_token": csrf(page),
        }
        simulated = await client.post("/console/agreements/age-for-welfare/edit", data=form)
        assert simulated.status_code == 200, simulated.text[:3000]
        saved = await client.post(
            "/console/agreements/age-for-welfare/edit",
            data={
                "step": "save",
                "draft": shown(DRAFT, simulated),
                "reason": "fraud checks too",
                "expected_version": "1",
                "csrf_token": csrf(simulated),
            },
        )
        assert saved.status_code == 303, saved.text[:2000]
        row = await policy_repository.current_version(session, "age-for-welfare")
        assert row is not None
        assert (row.version, row.content["verify"]) == (2, claims)
        assert row.content["purposes"] == ["benefit-eligibility", "fraud-investigation"]
