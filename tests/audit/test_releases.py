"""check-releases: every release of an owner's fields re-decided from an exported bundle.

Each test builds a signed government in a scratch database (the register and DVLA sign
their agreements), serves real requests through the records access path, then exports the
log as a bundle and checks it, as the owner would, with only the bundle and two keys.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from sqlalchemy import insert, select, update

from service.app import create_app
from service.audit import service as audit_service
from service.audit import writer as audit_writer
from service.audit.checkpoint import NoteSigner, NoteVerifier
from service.audit.cli import check_bundle_releases, export_bundle
from service.audit.config import AuditSettings, load_signer
from service.audit.models import AuditEntryRow
from service.audit.releases import ReleaseReport
from service.audit.schemas import AuditEntry
from service.auth.dependencies import Principal, get_principal
from service.catalog.schemas import Catalog
from service.config import Settings
from service.db import create_engine
from service.policy.models import AgreementVersion, PolicyEpoch
from service.policy.schemas import AgreementSpec
from service.policy.signing import OwnerSigner, OwnerVerifier, text_digest, version_text
from service.policy.signing_files import sign_folder
from tests.fixtures.audit import make_sequencer, sequence_all
from tests.fixtures.databases import create_scratch_database, drop_scratch_database, settings_on

RECORDS_POLICIES = Path(__file__).parents[1] / "records" / "policies"

# A condition and a case reference, so re-decision covers both.
FRAUD_AGREEMENT = """  - id: welfare-reads-address-for-fraud
    consumer: welfare
    fields: [address]
    actions: [read]
    purposes: [fraud-investigation]
    legal_basis: "Social Security Fraud Act 2001, s.1"
    require_case_ref: true
    when: 'citizen.status == "active" && request.case_ref.startsWith("FR-")'
"""


# DVLA's penalty points, only with the citizen's consent: re-decided with the consents the
# log records.
CONSENT_AGREEMENT = """  - id: welfare-reads-points-with-consent
    consumer: welfare
    fields: [points]
    actions: [read]
    purposes: [benefit-eligibility]
    legal_basis: "The citizen's consent"
    basis: consent
"""


def _signed_policies(folder: Path) -> dict[str, OwnerSigner]:
    shutil.copytree(RECORDS_POLICIES, folder)
    with (folder / "register.yaml").open("a") as handle:
        handle.write(FRAUD_AGREEMENT)
    with (folder / "dvla.yaml").open("a") as handle:
        handle.write(CONSENT_AGREEMENT)
    signers = {owner: OwnerSigner.generate(owner) for owner in ("register", "dvla")}
    text = (folder / "catalog.yaml").read_text()
    for owner, signer in signers.items():
        text = text.replace(
            f"  - id: {owner}\n", f"  - id: {owner}\n    signing_key: {signer.verifier_key()}\n"
        )
    (folder / "catalog.yaml").write_text(text)
    for signer in signers.values():
        sign_folder(folder, signer)
    return signers


def _cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TELLONCE_DATABASE_URL": database_url, "TELLONCE_ENV": "test"}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], env=env, capture_output=True, text=True, check=False
    )


async def _principal_from_header(request: Request) -> Principal:
    department, _, roles = request.headers["x-test-as"].partition(":")
    return Principal.with_roles(f"{department}-client", department, *roles.split(","))


def as_(department: str, *roles: str, **headers: str) -> dict[str, str]:
    return {"X-Test-As": f"{department}:{','.join(roles)}", **headers}


@dataclass
class World:
    url: str
    settings: Settings
    signers: dict[str, OwnerSigner]
    tmp: Path

    def signer(self) -> NoteSigner:
        return load_signer(self.settings, AuditSettings().origin)

    async def export(self) -> Path:
        """Sequence every entry (with the app's checkpoint key) and export the bundle."""
        engine = create_engine(self.url)
        try:
            await sequence_all(make_sequencer(engine, self.signer(), every=5))
        finally:
            await engine.dispose()
        bundle = self.tmp / "bundle.jsonl"
        await export_bundle(settings_on(self.url), self.signer(), bundle)
        return bundle

    async def check(self, owner: str) -> ReleaseReport:
        bundle = await self.export()
        verifier = NoteVerifier.parse(self.signer().verifier_key())
        owner_key = OwnerVerifier.parse(self.signers[owner].verifier_key(), owner)
        report, _unrecorded = check_bundle_releases(bundle, verifier, owner, owner_key)
        return report

    async def serve(self) -> AsyncIterator[httpx.AsyncClient]:
        app: FastAPI = create_app(self.settings)
        app.dependency_overrides[get_principal] = _principal_from_header
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                yield client


async def _traffic(client: httpx.AsyncClient) -> str:
    """Releases of both owners' fields: reads, a lookup, a conditional read with a case ref,
    and a partial read where a forbid withholds one field."""
    registered = await client.post(
        "/v1/citizens",
        json={"national_id": "NI0000000A1", "fields": {"given_name": "Ada", "address": "1 Lane"}},
        headers=as_("register", "registrar"),
    )
    assert registered.status_code == 201, registered.text
    citizen = registered.json()["id"]
    written = await client.patch(
        f"/v1/citizens/{citizen}/fields",
        json={"fields": {"licence_status": "valid", "licence_number": "L1"}, "reason": "issued"},
        headers=as_("dvla", "writer"),
    )
    assert written.status_code == 200, written.text
    read = await client.get(
        f"/v1/citizens/{citizen}",
        params={"fields": "given_name,address,licence_status", "purpose": "benefit-eligibility"},
        headers=as_("welfare", "consumer"),
    )
    assert read.status_code == 200, read.text
    assert set(read.json()["fields"]) == {"given_name", "address", "licence_status"}
    found = await client.post(
        "/v1/citizens/lookup",
        json={"national_id": "NI0000000A1", "purpose": "benefit-eligibility"},
        headers=as_("welfare", "consumer"),
    )
    assert found.status_code == 200, found.text
    fraud = await client.get(
        f"/v1/citizens/{citizen}",
        params={"fields": "address", "purpose": "fraud-investigation"},
        headers=as_("welfare", "consumer", **{"X-Case-Ref": "FR-1"}),
    )
    assert fraud.status_code == 200, fraud.text
    partial = await client.get(
        f"/v1/citizens/{citizen}",
        params={"fields": "licence_status,licence_number", "purpose": "tax-administration"},
        headers=as_("revenue", "consumer"),
    )
    assert partial.status_code == 200, partial.text
    assert list(partial.json()["fields"]) == ["licence_status"]
    return str(citizen)


@pytest.fixture
async def world(database_url: str, root_key: str, tmp_path: Path) -> AsyncIterator[World]:
    url = await create_scratch_database(database_url)
    try:
        signers = _signed_policies(tmp_path / "policies")
        applied = _cli(url, "policies", "apply", str(tmp_path / "policies"))
        assert applied.returncode == 0, applied.stderr
        settings = Settings(
            env="test",
            database_url=url,
            data_dir=tmp_path / "data",
            root_key=root_key,  # type: ignore[arg-type]
            log_level="WARNING",
            policies_dir=tmp_path / "policies",
            run_workers=False,
        )
        yield World(url, settings, signers, tmp_path)
    finally:
        await drop_scratch_database(url)


class TestCheckReleases:
    async def test_a_clean_log_passes_for_both_signing_owners(self, world: World) -> None:
        async for client in world.serve():
            await _traffic(client)
        register = await world.check("register")
        assert register.unjustified == []
        # given_name+address read, the lookup, the conditional fraud read.
        assert register.releases == 3
        assert register.summary() == (
            "3 releases of register's fields checked, all justified by agreements signed by register"
        )
        dvla = await world.check("dvla")
        assert dvla.unjustified == []
        assert dvla.releases == 2

    async def test_releases_under_consent_are_re_decided_with_the_logged_consents(self, world: World) -> None:
        async for client in world.serve():
            citizen = await _traffic(client)
            written = await client.patch(
                f"/v1/citizens/{citizen}/fields",
                json={"fields": {"points": 3}, "reason": "offence"},
                headers=as_("dvla", "writer"),
            )
            assert written.status_code == 200, written.text
            portal = as_("portal", "citizen-portal")
            consents = f"/v1/citizens/{citizen}/consents"
            given = await client.post(
                consents, json={"agreement": "welfare-reads-points-with-consent"}, headers=portal
            )
            assert given.status_code == 201, given.text
            params = {"fields": "points", "purpose": "benefit-eligibility"}
            read = await client.get(
                f"/v1/citizens/{citizen}", params=params, headers=as_("welfare", "consumer")
            )
            assert read.status_code == 200, read.text
            revoked = await client.patch(
                f"{consents}/{given.json()['id']}", json={"status": "revoked"}, headers=portal
            )
            assert revoked.status_code == 200, revoked.text
            refused = await client.get(
                f"/v1/citizens/{citizen}", params=params, headers=as_("welfare", "consumer")
            )
            assert refused.status_code == 403
        dvla = await world.check("dvla")
        assert dvla.unjustified == []
        assert dvla.releases == 3

    async def test_the_live_log_check_agrees_with_the_bundle(self, world: World) -> None:
        async for client in world.serve():
            await _traffic(client)
        bundle = await world.check("register")
        engine = create_engine(world.url)
        try:
            size, live = await audit_service.check_stored_releases(
                engine.connect,
                NoteVerifier.parse(world.signer().verifier_key()),
                "register",
                OwnerVerifier.parse(world.signers["register"].verifier_key(), "register"),
            )
        finally:
            await engine.dispose()
        assert size == bundle.entries
        assert (live.releases, live.fields, live.unjustified) == (bundle.releases, bundle.fields, [])

    async def test_an_inserted_row_releases_nothing_and_is_counted(self, world: World) -> None:
        async for client in world.serve():
            citizen = await _traffic(client)
        # As an operator would: a new agreement straight into the table, and the epoch moved.
        engine = create_engine(world.url)
        grant = {
            "id": "operator-grant",
            "consumer": "revenue",
            "fields": ["given_name"],
            "actions": ["read"],
            "purposes": ["tax-administration"],
            "legal_basis": "none",
        }
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    insert(AgreementVersion).values(
                        agreement_id="operator-grant",
                        owner="register",
                        version=1,
                        status="active",
                        content=grant,
                        content_hash="0" * 64,
                        author="operator",
                        reason="",
                        is_current=True,
                        created_at=datetime.now(UTC),
                    )
                )
                await conn.execute(update(PolicyEpoch).values(epoch=PolicyEpoch.epoch + 1))
        finally:
            await engine.dispose()
        async for client in world.serve():
            read = await client.get(
                f"/v1/citizens/{citizen}",
                params={"fields": "given_name", "purpose": "tax-administration"},
                headers=as_("revenue", "consumer"),
            )
            # Nothing permits it: refused (404, since revenue may not know this citizen).
            assert read.status_code in (403, 404), read.text
            metrics = (await client.get("/metrics")).text
        assert "tellonce_policy_agreements_refused_total 1.0" in metrics
        report = await world.check("register")
        assert report.unjustified == []

    async def test_the_cli_prints_the_summary_and_exits_0(self, world: World) -> None:
        async for client in world.serve():
            await _traffic(client)
        bundle = await world.export()
        result = _cli(
            world.url,
            "audit",
            "check-releases",
            "--bundle",
            str(bundle),
            "--owner",
            "register",
            "--owner-key",
            world.signers["register"].verifier_key(),
            "--key",
            world.signer().verifier_key(),
        )
        assert result.returncode == 0, result.stderr
        assert "releases of register's fields checked, all justified by agreements signed by register" in (
            result.stdout
        )
        wrong_key = _cli(
            world.url,
            "audit",
            "check-releases",
            "--bundle",
            str(bundle),
            "--owner",
            "register",
            "--owner-key",
            OwnerSigner.generate("register").verifier_key(),
        )
        # The log's agreements are not signed by that key: every release is unjustified.
        assert wrong_key.returncode == 1
        assert "is not signed by register" in wrong_key.stderr

    async def test_an_agreement_swapped_in_the_database_fails_naming_the_entry(
        self, world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async for client in world.serve():
            citizen = await _traffic(client)
        # The operator runs a server that skips signature checks, and widens an agreement
        # straight in the table: the service then releases under the swapped text.
        monkeypatch.setattr(Catalog, "signing_keys", property(lambda _self: {}))
        engine = create_engine(world.url)
        try:
            async with engine.begin() as conn:
                row = (
                    await conn.execute(
                        select(AgreementVersion.id, AgreementVersion.content).where(
                            AgreementVersion.agreement_id == "welfare-reads-identity",
                            AgreementVersion.is_current.is_(True),
                        )
                    )
                ).one()
                swapped = {**row.content, "purposes": [*row.content["purposes"], "tax-administration"]}
                await conn.execute(
                    update(AgreementVersion).where(AgreementVersion.id == row.id).values(content=swapped)
                )
            async with engine.begin() as conn:
                await conn.execute(update(PolicyEpoch).values(epoch=PolicyEpoch.epoch + 1))
        finally:
            await engine.dispose()
        async for client in world.serve():
            read = await client.get(
                f"/v1/citizens/{citizen}",
                params={"fields": "given_name", "purpose": "tax-administration"},
                headers=as_("welfare", "consumer"),
            )
            assert read.status_code == 200, read.text
            request_id = read.headers["x-request-id"]
        monkeypatch.undo()
        report = await world.check("register")
        [unjustified] = report.unjustified
        assert unjustified.field == "given_name"
        assert "the agreement was changed after it was recorded" in unjustified.problem
        entry = await _entry_by_request(world.url, request_id)
        assert unjustified.label == f"entry {entry}"

    async def test_an_entry_whose_purpose_was_changed_fails(self, world: World) -> None:
        async for client in world.serve():
            await _traffic(client)
        # The operator records a release as if made for another purpose.
        engine = create_engine(world.url)
        try:
            async with engine.connect() as conn:
                canonical = (
                    await conn.execute(
                        select(AuditEntryRow.canonical)
                        .where(AuditEntryRow.action == "read", AuditEntryRow.department == "welfare")
                        .order_by(AuditEntryRow.id)
                        .limit(1)
                    )
                ).scalar_one()
            record: dict[str, Any] = json.loads(canonical)
            record.update(purpose="fraud-investigation", request_id="forged-purpose-1")
            async with engine.begin() as conn:
                forged_id = await audit_writer.append_in_transaction(conn, AuditEntry.model_validate(record))
        finally:
            await engine.dispose()
        report = await world.check("register")
        assert {u.label for u in report.unjustified} == {f"entry {forged_id}"}
        assert {u.field for u in report.unjustified} == {"given_name", "address"}
        assert all("re-decided from the entry, the access is denied" in u.problem for u in report.unjustified)
        # DVLA's licence_status in the same forged entry is not covered for that purpose either.
        dvla = await world.check("dvla")
        assert [u.field for u in dvla.unjustified] == ["licence_status"]


async def _policy_entries(url: str, decision: str) -> list[dict[str, Any]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(AuditEntryRow.canonical)
                .where(AuditEntryRow.action == "policy-change", AuditEntryRow.decision == decision)
                .order_by(AuditEntryRow.id)
            )
            return [json.loads(text) for text in rows.scalars()]
    finally:
        await engine.dispose()


class TestRefusedPolicyChanges:
    """A change beyond the owner's rights is refused with an entry of decision ``deny``,
    which the app commits on its own (the change itself rolls back) and which names no
    agreement version: the log still verifies and every release is still justified."""

    async def test_refusals_are_committed_and_leave_the_check_clean(self, world: World) -> None:
        owner = as_("register", "data-owner")
        foreign = {
            "id": "register-grants-licence",
            "consumer": "welfare",
            "fields": ["given_name", "licence_status"],
            "actions": ["read"],
            "purposes": ["benefit-eligibility"],
            "legal_basis": "Test Act s.1",
        }
        async for client in world.serve():
            await _traffic(client)
            created = await client.post("/v1/policies", json=foreign, headers=owner)
            assert created.status_code == 403, created.text
            replaced = await client.put(
                "/v1/policies/welfare-reads-licence", json=foreign, headers={**owner, "If-Match": '"1"'}
            )
            assert replaced.status_code == 404, replaced.text
            revoked = await client.delete("/v1/policies/no-such-agreement", headers=owner)
            assert revoked.status_code == 404, revoked.text
            # Releases after the refusals are decided (and checked) as before them.
            await _traffic_after_refusals(client)
        refused = await _policy_entries(world.url, "deny")
        assert [(e["status"], e["reasons"][0]["agreement"]) for e in refused] == [
            (403, "register-grants-licence"),
            (404, "welfare-reads-licence"),
            (404, "no-such-agreement"),
        ]
        assert all(e["document"] is None and e["reasons"][0]["version"] is None for e in refused)
        register = await world.check("register")
        assert (register.unjustified, register.releases) == ([], 4)
        dvla = await world.check("dvla")
        assert (dvla.unjustified, dvla.releases) == ([], 3)

    async def test_a_deny_entry_is_never_taken_for_a_version(self, world: World) -> None:
        """Even one that carries a signed version and its document (no refusal writes
        either): only permitted policy-change entries stored versions. Taken for one, this
        forbid would be in force, and the register's releases unjustified."""
        content = AgreementSpec.model_validate(
            {
                "id": "forged-forbid",
                "consumer": "welfare",
                "fields": ["given_name", "address"],
                "actions": ["read"],
                "purposes": [],
                "effect": "forbid",
            }
        ).content()
        document = version_text(world.signers["register"].signed(content), "register")
        forged = AuditEntry.model_validate(
            {
                "time": datetime.now(UTC).isoformat(),
                "request_id": "forged",
                "client_id": "register-client",
                "department": "register",
                "action": "policy-change",
                "owners": ["register"],
                "decision": "deny",
                "reasons": [
                    {
                        "field": "",
                        "effect": "active",
                        "agreement": "forged-forbid",
                        "version": 1,
                        "digest": text_digest(document),
                    }
                ],
                "status": 403,
                "document": document,
            }
        )
        engine = create_engine(world.url)
        try:
            async with engine.begin() as conn:
                await audit_writer.append_in_transaction(conn, forged)
        finally:
            await engine.dispose()
        async for client in world.serve():
            await _traffic(client)
        register = await world.check("register")
        assert (register.unjustified, register.releases) == ([], 3)


class TestRefusalsFailClosed:
    async def test_while_the_audit_cannot_be_written_a_refusal_is_503(self, world: World) -> None:
        app: FastAPI = create_app(world.settings)
        app.dependency_overrides[get_principal] = _principal_from_header
        async with app.router.lifespan_context(app):
            await app.state.audit_writer.stop()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                response = await client.delete(
                    "/v1/policies/no-such-agreement", headers=as_("register", "data-owner")
                )
        assert response.status_code == 503, response.text
        assert response.json()["type"].endswith("/audit-unavailable")
        assert await _policy_entries(world.url, "deny") == []


async def _traffic_after_refusals(client: httpx.AsyncClient) -> None:
    """One more release of each owner's fields."""
    registered = await client.post(
        "/v1/citizens",
        json={"national_id": "NI0000000B2", "fields": {"given_name": "Bo", "address": "2 Lane"}},
        headers=as_("register", "registrar"),
    )
    assert registered.status_code == 201, registered.text
    citizen = registered.json()["id"]
    written = await client.patch(
        f"/v1/citizens/{citizen}/fields",
        json={"fields": {"licence_status": "valid"}, "reason": "issued"},
        headers=as_("dvla", "writer"),
    )
    assert written.status_code == 200, written.text
    read = await client.get(
        f"/v1/citizens/{citizen}",
        params={"fields": "given_name,licence_status", "purpose": "benefit-eligibility"},
        headers=as_("welfare", "consumer"),
    )
    assert read.status_code == 200, read.text
    assert set(read.json()["fields"]) == {"given_name", "licence_status"}


async def _entry_by_request(url: str, request_id: str) -> int:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(AuditEntryRow.id, AuditEntryRow.canonical))).all()
    finally:
        await engine.dispose()
    return int(next(row.id for row in rows if json.loads(row.canonical)["request_id"] == request_id))
