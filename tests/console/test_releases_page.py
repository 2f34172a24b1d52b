"""The owner's Releases page: ``audit check-releases`` on the live log, through the same
service function, from the console.

The page tests run on the test's transaction; the checks themselves need a sequenced,
checkpointed log, so they build the signed government of ``tests/audit/test_releases.py``
in a scratch database, serve real traffic, and ask the console."""

from __future__ import annotations

import html
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.audit import writer as audit_writer
from service.audit.models import AuditEntryRow
from service.audit.schemas import AuditEntry
from service.auth import service as auth_service
from service.config import Settings
from service.db import create_engine
from service.policy import service as policy_service
from service.policy.loader import load_policy_folder
from service.policy.signing import OwnerSigner
from tests.audit.test_releases import World, _cli, _signed_policies, _traffic
from tests.console.test_real_services import sign_in
from tests.console.test_signed_agreements import csrf, error_summary, sign_in_as
from tests.fixtures.audit import make_sequencer, sequence_all
from tests.fixtures.databases import create_scratch_database, drop_scratch_database
from tests.policy.test_signing import signed_folder

RESULT = re.compile(r'<div class="panel [^"]*" id="releases-result".*?</div>\s*</div>', re.S)


def result(page: httpx.Response) -> str:
    found = RESULT.search(page.text)
    assert found is not None, page.text[:3000]
    return html.unescape(found.group(0))


class TestReleasesPage:
    async def test_an_owner_with_a_key_is_offered_the_check_with_the_catalogs_key(
        self, client: httpx.AsyncClient, session: AsyncSession, tmp_path: Path
    ) -> None:
        folder, signers = signed_folder(tmp_path, "dvla")
        await policy_service.apply_folder(session, load_policy_folder(folder), author="tests", reason="f")
        await sign_in_as(session, client, "dvla")
        page = await client.get("/console/releases")
        assert page.status_code == 200
        assert f'value="{signers["dvla"].verifier_key()}"' in page.text
        assert "Check every release now" in page.text
        assert 'aria-current="page">Releases</a>' in page.text

    async def test_an_owner_without_a_key_is_told_how_to_make_one(
        self, client: httpx.AsyncClient, session: AsyncSession, tmp_path: Path
    ) -> None:
        folder, _signers = signed_folder(tmp_path, "dvla")
        await policy_service.apply_folder(session, load_policy_folder(folder), author="tests", reason="f")
        await sign_in_as(session, client, "revenue")
        page = await client.get("/console/releases")
        assert page.status_code == 200
        assert "tellonce owners keygen --department revenue" in page.text
        assert "Check every release now" not in page.text

    @pytest.mark.parametrize(
        ("key", "message"),
        [
            ("", "Enter your department's signing key"),
            ("not a key", "The signing key is not one of dvla's"),
            (OwnerSigner.generate("revenue").verifier_key(), "is named 'revenue', not the department 'dvla'"),
        ],
    )
    async def test_a_key_that_is_not_the_owners_is_refused_before_any_check(
        self, client: httpx.AsyncClient, session: AsyncSession, tmp_path: Path, key: str, message: str
    ) -> None:
        folder, _signers = signed_folder(tmp_path, "dvla")
        await policy_service.apply_folder(session, load_policy_folder(folder), author="tests", reason="f")
        await sign_in_as(session, client, "dvla")
        page = await client.get("/console/releases")
        data = {"owner_key": key, "csrf_token": csrf(page)}
        refused = await client.post("/console/releases/check", data=data)
        assert refused.status_code == 422
        summary = error_summary(refused)
        assert 'href="#owner_key"' in summary
        assert message in summary
        assert 'id="releases-result"' not in refused.text

    async def test_only_data_owners_and_only_with_the_token(
        self, client: httpx.AsyncClient, session: AsyncSession, tmp_path: Path
    ) -> None:
        folder, _signers = signed_folder(tmp_path, "dvla")
        await policy_service.apply_folder(session, load_policy_folder(folder), author="tests", reason="f")
        await sign_in_as(session, client, "dvla")
        assert (await client.post("/console/releases/check", data={"owner_key": "x"})).status_code == 403
        auditor = await auth_service.create_client(session, department="audit-office", roles=["auditor"])
        assert auditor.client_secret is not None
        await client.post("/console/sign-out", data={"csrf_token": csrf(await client.get("/console"))})
        assert (await sign_in(client, auditor.client_id, auditor.client_secret)).status_code == 303
        assert (await client.get("/console/releases")).status_code == 403


@pytest.fixture
async def world(database_url: str, root_key: str, tmp_path: Path) -> AsyncIterator[World]:
    """The signed government of the bundle tests (the register and DVLA sign), in a scratch database."""
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


async def _sequenced(world: World) -> None:
    engine = create_engine(world.url)
    try:
        await sequence_all(make_sequencer(engine, world.signer(), every=5))
    finally:
        await engine.dispose()


async def _owner_client(world: World, department: str) -> tuple[str, str]:
    engine = create_engine(world.url)
    try:
        async with async_sessionmaker(engine)() as session:
            created = await auth_service.create_client(session, department=department, roles=["data-owner"])
            await session.commit()
    finally:
        await engine.dispose()
    assert created.client_secret is not None
    return created.client_id, created.client_secret


async def _check_in_console(world: World, department: str, key: str | None = None) -> httpx.Response:
    """Sign in as the department's data owner and press the button, with the key shown or ``key``."""
    client_id, secret = await _owner_client(world, department)
    done = None
    async for client in world.serve():
        assert (await sign_in(client, client_id, secret)).status_code == 303
        page = await client.get("/console/releases")
        shown = re.search(r'id="owner_key" name="owner_key" type="text" value="([^"]*)"', page.text)
        assert shown is not None, page.text[:3000]
        data = {"owner_key": key or html.unescape(shown.group(1)), "csrf_token": csrf(page)}
        done = await client.post("/console/releases/check", data=data)
    assert done is not None
    return done


class TestReleasesCheckOnTheLiveLog:
    async def test_a_clean_log_is_justified_as_the_cli_finds_it(self, world: World) -> None:
        async for client in world.serve():
            await _traffic(client)
        await _sequenced(world)
        done = await _check_in_console(world, "register")
        assert done.status_code == 200, done.text[:3000]
        shown = result(done)
        assert "Every release was justified" in shown
        # The same count as the bundle check of the same traffic (tests/audit/test_releases.py).
        assert "3 releases of register's fields checked, all justified by agreements signed by register" in (
            shown
        )

    async def test_the_owners_own_copy_of_another_key_finds_nothing_signed(self, world: World) -> None:
        async for client in world.serve():
            await _traffic(client)
        await _sequenced(world)
        done = await _check_in_console(world, "register", OwnerSigner.generate("register").verifier_key())
        assert done.status_code == 200
        assert "Some releases were NOT justified" in result(done)
        assert "is not signed by register" in done.text

    async def test_a_forged_purpose_is_named(self, world: World) -> None:
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
                forged = await audit_writer.append_in_transaction(conn, AuditEntry.model_validate(record))
        finally:
            await engine.dispose()
        await _sequenced(world)
        done = await _check_in_console(world, "register")
        assert done.status_code == 200
        assert "1 NOT justified by an agreement signed by register" in result(done)
        listed = re.findall(r"<li>(.*?)</li>", done.text.split('id="unjustified"', 1)[1])
        assert {html.unescape(line).split(" (leaf")[0] for line in listed} == {f"entry {forged}"}
        assert all("the access is denied" in html.unescape(line) for line in listed)
