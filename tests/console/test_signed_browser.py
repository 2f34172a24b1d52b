"""A department that signs its agreements, in a real browser against a real server.

DVLA has a signing key in this site's catalog and its agreements are signed. Its data
owner creates an agreement: refused unsigned (the error summary names the signature and
the page shows the text to sign), refused with a wrong signature, saved with DVLA's; then
checks every release of DVLA's fields on the live log from the Releases page.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from service.policy.signing import OwnerSigner
from service.policy.signing_files import sign_folder
from tests.conftest import server_env
from tests.console.conftest import CONSOLE_POLICIES, ConsoleSite, Credentials, sign_in
from tests.fixtures.databases import create_scratch_database, drop_scratch_database
from tests.fixtures.server import start_server

pytestmark = pytest.mark.e2e

CLIENTS = {
    "owner": ("dvla", "data-owner"),
    "registrar": ("register", "registrar"),
    "welfare": ("welfare", "consumer"),
}


def _signed_policies(folder: Path, signer: OwnerSigner) -> None:
    shutil.copytree(CONSOLE_POLICIES, folder)
    catalog = folder / "catalog.yaml"
    text = catalog.read_text()
    line = "  - id: dvla\n"
    assert line in text
    catalog.write_text(text.replace(line, f"{line}    signing_key: {signer.verifier_key()}\n", 1))
    sign_folder(folder, signer)


def _wait_for_checkpoint(site: ConsoleSite, deadline_seconds: float = 30) -> None:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if httpx.get(f"{site.url}/v1/audit/checkpoint", timeout=10).status_code == 200:
            return
        time.sleep(0.2)
    raise AssertionError("no checkpoint was signed in time")


@pytest.fixture(scope="module")
async def signed_site(
    database_url: str, root_key: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[ConsoleSite, OwnerSigner]]:
    url = await create_scratch_database(database_url)
    data = tmp_path_factory.mktemp("signed-console")
    signer = OwnerSigner.generate("dvla")
    _signed_policies(data / "policies", signer)
    env = {
        **server_env(url, data, root_key),
        "TELLONCE_POLICIES_DIR": str(data / "policies"),
        "TELLONCE_AUDIT_CHECKPOINT_INTERVAL_MS": "100",
        "TELLONCE_AUDIT_PUBLIC_CHECKPOINT": "true",
    }
    site = ConsoleSite(server=None, database_url=url, env=env, clients={})  # type: ignore[arg-type]
    try:
        await site.cli("policies", "apply", str(data / "policies"))
        printed = await asyncio.gather(
            *(
                site.cli("clients", "create", "--department", department, "--roles", roles, "--json")
                for department, roles in CLIENTS.values()
            )
        )
        for name, output in zip(CLIENTS, printed, strict=True):
            created = json.loads(output)
            site.clients[name] = Credentials(created["client_id"], created["client_secret"])
        site.server = await asyncio.to_thread(start_server, env, data / "server.log", timeout=90)
        try:
            registered = site.api(
                "registrar",
                "POST",
                "/v1/citizens",
                json={"national_id": "NI200001", "fields": {"given_name": "Ada"}},
            )
            assert registered.status_code == 201, registered.text
            # A release of DVLA's field under its signed agreement.
            read = site.api(
                "welfare",
                "GET",
                f"/v1/citizens/{registered.json()['id']}",
                params={"fields": "licence_status", "purpose": "benefit-eligibility"},
            )
            assert read.status_code == 200, read.text
            _wait_for_checkpoint(site)
            yield site, signer
        finally:
            site.server.stop()
    finally:
        await drop_scratch_database(url)


@pytest.fixture
async def signed_page(browser: Browser, signed_site: tuple[ConsoleSite, OwnerSigner]) -> AsyncIterator[Page]:
    """A fresh browser profile on the signed site."""
    context = await browser.new_context(base_url=signed_site[0].url, locale="en-GB", timezone_id="UTC")
    context.set_default_timeout(10_000)
    try:
        yield await context.new_page()
    finally:
        await context.close()


async def shot(page: Page, site: ConsoleSite, name: str) -> None:
    await page.screenshot(path=site.screenshot_path(name), full_page=True)


class TestSignedAgreementInTheBrowser:
    async def test_refused_unsigned_and_wrongly_signed_then_saved_signed_and_releases_checked(
        self, signed_page: Page, signed_site: tuple[ConsoleSite, OwnerSigner]
    ) -> None:
        site, signer = signed_site
        page = signed_page
        await sign_in(page, site, "owner")
        await page.goto("/console/agreements/new")
        await expect(page.locator("#signing-text-later")).to_be_visible()
        await page.get_by_label("Agreement ID").fill("points-for-revenue")
        await page.get_by_label("Consumer department").select_option("revenue")
        await page.locator("#fields").get_by_label("points").check()
        await page.locator("#purposes").get_by_label("Tax administration").check()
        await page.get_by_label("Legal basis").fill("Finance Act 2008, Sch. 36")
        await page.get_by_label("Reason for this change").fill("Points affect company car tax")

        async with page.expect_response(lambda r: r.request.method == "POST") as answer:
            await page.get_by_role("button", name="Continue").click()
        assert (await answer.value).status == 422
        summary = page.locator(".error-summary")
        await expect(summary).to_be_focused()
        await expect(summary).to_contain_text("Unsigned: dvla has a signing key")
        await expect(page.locator("#signature-error")).to_contain_text("Unsigned")
        text = await page.locator("#signing-text").inner_text()
        assert json.loads(text)["owner"] == "dvla"
        await expect(page.locator("#sign-command")).to_contain_text("tellonce owners sign --key dvla.key")
        await shot(page, site, "signed-agreement-unsigned")
        # The summary links to the signature box; what was typed is kept.
        await summary.get_by_role("link", name=re.compile("^Unsigned")).click()
        await expect(page.get_by_label("Your department's signature")).to_be_focused()
        await expect(page.get_by_label("Agreement ID")).to_have_value("points-for-revenue")

        impostor = OwnerSigner.generate("dvla")
        await page.get_by_label("Your department's signature").fill(
            base64.b64encode(impostor.sign_text(text)).decode()
        )
        async with page.expect_response(lambda r: r.request.method == "POST") as answer:
            await page.get_by_role("button", name="Continue").click()
        assert (await answer.value).status == 422
        summary = page.locator(".error-summary")
        await expect(summary).to_contain_text("does not verify under dvla's signing key")
        await shot(page, site, "signed-agreement-wrong-signature")

        await page.get_by_label("Your department's signature").fill(
            base64.b64encode(signer.sign_text(text)).decode()
        )
        await page.get_by_role("button", name="Continue").click()
        await expect(page.get_by_role("heading", level=1)).to_have_text("Check the effect before you save")
        await page.get_by_role("button", name="Save as a new version").click()
        await expect(page.locator(".panel--confirmation")).to_contain_text("Agreement saved")
        await shot(page, site, "signed-agreement-saved")

        await page.get_by_role("navigation").get_by_role("link", name="Releases").click()
        await expect(page.get_by_label("Your department's signing key")).to_have_value(signer.verifier_key())
        await page.get_by_role("button", name="Check every release now").click()
        result = page.locator("#releases-result")
        await expect(result).to_contain_text("Every release was justified")
        justified = r"[1-9]\d* releases of dvla's fields checked, all justified by agreements signed by dvla"
        await expect(result).to_contain_text(re.compile(justified))
        await shot(page, site, "releases-checked")
