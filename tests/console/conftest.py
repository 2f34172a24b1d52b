"""The console's end-to-end set-up: one real server per module, one browser per module.

The server is ``tellonce serve`` on a loopback port against a scratch database, its
checkpoints cosigned by two real witness processes (quorum: both). Its catalog and
agreements come from ``tests/console/policies`` through the policies CLI, its clients
from the clients CLI, and its citizens and audited traffic from the API with real tokens.
Chromium is Debian's (``/usr/bin/chromium``), driven by Playwright.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from service.audit.config import AuditSettings, load_signer
from service.config import Settings
from tests.conftest import REPO_ROOT, server_env
from tests.fixtures.databases import create_scratch_database, drop_scratch_database, is_postgres
from tests.fixtures.server import LiveServer, start_server
from tests.fixtures.witnesses import WitnessProcess

CONSOLE_POLICIES = Path(__file__).parent / "policies"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGE_SIZE = 5
# The two witnesses that cosign the console site's checkpoints.
WITNESS_NAMES = ("audit-office.example/witness", "ico.example/witness")


@dataclass(frozen=True)
class Credentials:
    client_id: str
    client_secret: str


@dataclass
class ConsoleSite:
    """The running server, its clients by name, and the citizens made through the API."""

    server: LiveServer
    database_url: str
    env: dict[str, str]
    clients: dict[str, Credentials]
    citizens: list[str] = field(default_factory=list)
    witnesses: list[WitnessProcess] = field(default_factory=list)
    artifacts: Path = REPO_ROOT / "test-artifacts" / "console"

    @property
    def url(self) -> str:
        return self.server.base_url

    async def cli(self, *args: str) -> str:
        """Run ``tellonce ARGS`` against the site's database; its standard output."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service.cli",
            *args,
            env={**os.environ, **self.env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        assert process.returncode == 0, out.decode() + err.decode()
        return out.decode()

    def token(self, name: str) -> str:
        credentials = self.clients[name]
        response = httpx.post(
            f"{self.url}/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(credentials.client_id, credentials.client_secret),
            timeout=10,
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token

    def api(self, name: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token(name)}", **kwargs.pop("headers", {})}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=10, **kwargs)

    def screenshot_path(self, name: str) -> str:
        folder = self.artifacts / ("postgres" if is_postgres(self.database_url) else "sqlite")
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder / f"{name}.png")


# name -> (department, roles)
# Few on purpose: each is one run of the CLI, which takes seconds to start.
CLIENTS = {
    "owner": ("register", "data-owner"),
    "auditor": ("audit-office", "auditor"),
    "portal": ("portal", "citizen-portal"),
    "registrar": ("register", "registrar"),
    "welfare": ("welfare", "consumer"),
}


def _make_traffic(site: ConsoleSite) -> None:
    """Two citizens. Welfare reads the register's fields 5 times, is refused the address
    twice for a purpose no agreement names, and reads one DVLA field once."""
    for given_name, national_id in (("Ada", "NI100001"), ("Grace", "NI100002")):
        created = site.api(
            "registrar",
            "POST",
            "/v1/citizens",
            json={
                "national_id": national_id,
                "fields": {"given_name": given_name, "date_of_birth": "1980-02-03", "address": "1 High St"},
            },
        )
        assert created.status_code == 201, created.text
        site.citizens.append(created.json()["id"])
    for citizen_id, times in zip(site.citizens, (3, 2), strict=True):
        for _ in range(times):
            read = site.api(
                "welfare",
                "GET",
                f"/v1/citizens/{citizen_id}",
                params={"fields": "address,given_name", "purpose": "benefit-eligibility"},
            )
            assert read.status_code == 200, read.text
    for _ in range(2):
        refused = site.api(
            "welfare",
            "GET",
            f"/v1/citizens/{site.citizens[0]}",
            params={"fields": "address", "purpose": "fraud-investigation"},
        )
        # 403: welfare may know the citizen exists, but no agreement names this purpose.
        assert refused.status_code == 403, refused.text
    licence = site.api(
        "welfare",
        "GET",
        f"/v1/citizens/{site.citizens[0]}",
        params={"fields": "licence_status", "purpose": "benefit-eligibility"},
    )
    assert licence.status_code == 200, licence.text


@pytest.fixture(scope="module")
async def console_site(
    database_url: str, root_key: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ConsoleSite]:
    url = await create_scratch_database(database_url)
    data = tmp_path_factory.mktemp("console-data")
    env = {
        **server_env(url, data, root_key),
        "TELLONCE_POLICIES_DIR": str(CONSOLE_POLICIES),
        "TELLONCE_CONSOLE_PAGE_SIZE": str(PAGE_SIZE),
        "TELLONCE_AUDIT_CHECKPOINT_INTERVAL_MS": "100",
    }
    site = ConsoleSite(server=None, database_url=url, env=env, clients={})  # type: ignore[arg-type]
    log_vkey = load_signer(
        Settings(env="test", database_url=url, data_dir=data, root_key=root_key),  # type: ignore[arg-type]
        AuditSettings().origin,
    ).verifier_key()
    site.witnesses = [
        WitnessProcess(name, tmp_path_factory.mktemp("witness"), log_vkey) for name in WITNESS_NAMES
    ]
    try:
        await asyncio.gather(*(asyncio.to_thread(witness.start) for witness in site.witnesses))
        env["TELLONCE_AUDIT_WITNESSES"] = " ".join(witness.config for witness in site.witnesses)
        await site.cli("policies", "apply", str(CONSOLE_POLICIES))
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
            _make_traffic(site)
            yield site
        finally:
            site.server.stop()
    finally:
        for witness in site.witnesses:
            witness.stop()
        await drop_scratch_database(url)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def context(browser: Browser, console_site: ConsoleSite) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile per test: no cookies carried from one test to the next."""
    browser_context = await browser.new_context(
        base_url=console_site.url, accept_downloads=True, locale="en-GB", timezone_id="UTC"
    )
    browser_context.set_default_timeout(10_000)
    try:
        yield browser_context
    finally:
        await browser_context.close()


@pytest.fixture
async def page(context: BrowserContext) -> Page:
    browser_page = await context.new_page()
    return browser_page


async def sign_in(page: Page, site: ConsoleSite, name: str) -> None:
    credentials = site.clients[name]
    await page.goto("/console/sign-in")
    await page.get_by_label("Client ID").fill(credentials.client_id)
    await page.get_by_label("Client secret").fill(credentials.client_secret)
    await page.get_by_role("button", name="Sign in").click()
    # The home page itself, not the sign-in page with ?next=/console.
    await expect(page.get_by_role("heading", level=1)).not_to_have_text("Sign in to the tellonce console")
    await expect(page).to_have_url(f"{site.url}/console")
