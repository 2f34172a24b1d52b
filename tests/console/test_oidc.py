"""Console single sign-on against a real OpenID provider (``oidc-provider`` from the npm
registry, ``tests/oidc/provider.mjs``) on loopback, driven in Chromium: authorization
code flow with PKCE and a nonce, the claim-to-role mapping, sign-out at both ends, and
the refusals. ``.ci/run`` installs the provider with ``npm ci``."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from service.config import Settings
from service.db import Database
from service.policy import service as policy_service
from service.policy.loader import load_policy_folder
from tests.conftest import REPO_ROOT, server_env
from tests.console.conftest import CONSOLE_POLICIES
from tests.fixtures.databases import create_scratch_database, drop_scratch_database
from tests.fixtures.server import LiveServer, free_port, start_server

pytestmark = pytest.mark.e2e

PROVIDER_DIR = REPO_ROOT / "tests" / "oidc"
CLIENT_ID = "tellonce-console"
CLIENT_SECRET = "console-secret-for-tests-only-0123456789"
ACCOUNTS = {
    "ada": {"name": "Ada Lovelace", "email": "ada@register.example", "groups": ["register-owners"]},
    "alan": {"name": "Alan Turing", "email": "alan@audit.example", "groups": ["staff", "auditors"]},
    "eve": {"name": "Eve", "email": "eve@example.org", "groups": ["visitors"]},
}
ROLE_MAP = """\
claim: groups
rules:
  - {group: register-owners, department: register, role: data-owner}
  - {group: auditors, department: audit-office, role: auditor}
"""


@dataclass
class OidcSite:
    server: LiveServer
    issuer: str

    @property
    def url(self) -> str:
        return self.server.base_url


def _start_provider(folder: Path, console_url: str) -> tuple[subprocess.Popen[bytes], str]:
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        raise RuntimeError(
            "tests/oidc/node_modules is missing: run `npm ci --prefix tests/oidc` (.ci/run does)"
        )
    port = free_port()
    config = folder / "provider.json"
    config.write_text(
        json.dumps(
            {
                "port": port,
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "redirect_uris": [f"{console_url}/console/oidc/callback"],
                "post_logout_redirect_uris": [f"{console_url}/console/sign-in?signed_out=1"],
                "accounts": ACCOUNTS,
            }
        )
    )
    log = folder / "provider.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["node", str(PROVIDER_DIR / "provider.mjs"), str(config)], stdout=output, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 30
    while "ready " not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the OpenID provider did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
async def oidc_site(
    database_url: str, root_key: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[OidcSite]:
    url = await create_scratch_database(database_url)
    data = tmp_path_factory.mktemp("oidc-data")
    port = free_port()
    console_url = f"http://127.0.0.1:{port}"
    provider, issuer = await asyncio.to_thread(_start_provider, data, console_url)
    role_map = data / "console-roles.yaml"
    role_map.write_text(ROLE_MAP)
    env = server_env(url, data, root_key) | {
        "TELLONCE_POLICIES_DIR": str(CONSOLE_POLICIES),
        "TELLONCE_PUBLIC_URL": console_url,
        "TELLONCE_CONSOLE_OIDC_ISSUER": issuer,
        "TELLONCE_CONSOLE_OIDC_CLIENT_ID": CLIENT_ID,
        "TELLONCE_CONSOLE_OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "TELLONCE_CONSOLE_OIDC_ROLE_MAP": str(role_map),
    }
    try:
        database = Database(Settings(env="test", database_url=url, data_dir=data))
        try:
            async with database.sessions.begin() as session:
                await policy_service.apply_folder(
                    session, load_policy_folder(CONSOLE_POLICIES), author="tests", reason="oidc tests"
                )
        finally:
            await database.dispose()
        server = await asyncio.to_thread(start_server, env, data / "server.log", timeout=90, port=port)
        try:
            yield OidcSite(server, issuer)
        finally:
            server.stop()
            assert "Traceback" not in server.log(), server.log()
    finally:
        provider.terminate()
        provider.wait(timeout=10)
        await drop_scratch_database(url)


@pytest.fixture
async def oidc_context(browser: Browser, oidc_site: OidcSite) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile per test, on the console of the single sign-on site."""
    context = await browser.new_context(base_url=oidc_site.url, locale="en-GB", timezone_id="UTC")
    context.set_default_timeout(15_000)
    try:
        yield context
    finally:
        await context.close()


@pytest.fixture
async def oidc_page(oidc_context: BrowserContext) -> Page:
    return await oidc_context.new_page()


async def provider_login(page: Page, login: str) -> None:
    """oidc-provider's development login form: any password, the login names the account."""
    await expect(page).to_have_url(re.compile(r"^http://127\.0\.0\.1:\d+/interaction/"))
    await page.locator("input[name=login]").fill(login)
    await page.locator("input[name=password]").fill("any password")
    await page.get_by_role("button", name="Sign-in").click()


class TestSingleSignOn:
    async def test_a_data_owner_signs_in_and_out_through_the_provider(
        self, oidc_page: Page, oidc_site: OidcSite
    ) -> None:
        page = oidc_page
        await page.goto("/console/agreements")
        await expect(page).to_have_url(re.compile(r"/console/sign-in\?next=/console/agreements$"))
        # The client-secret form stays beside it, for development.
        await expect(page.get_by_label("Client ID")).to_be_visible()
        await page.get_by_role("link", name="Sign in with your organisation account").click()
        await provider_login(page, "ada")
        # Back where the person was going, with a console session for the mapped role.
        await expect(page).to_have_url(f"{oidc_site.url}/console/agreements")
        header = page.locator("header")
        await expect(header).to_contain_text("oidc:ada")
        await expect(header).to_contain_text("register")
        await expect(header).to_contain_text("Data owner")
        cookies = {c["name"]: c for c in await page.context.cookies(f"{oidc_site.url}/console/oidc/x")}
        assert cookies["tellonce_console"]["httpOnly"] is True
        assert cookies["tellonce_console"]["sameSite"] == "Strict"
        assert "tellonce_console_oidc" not in cookies

        await page.get_by_role("button", name="Sign out").click()
        # The provider asks whether to end its session too, then sends the person back.
        await page.get_by_role("button", name="Yes, sign me out").click()
        await expect(page).to_have_url(f"{oidc_site.url}/console/sign-in?signed_out=1")
        await expect(page.get_by_text("You have signed out.")).to_be_visible()
        await page.goto("/console")
        await expect(page).to_have_url(re.compile(r"/console/sign-in"))

    async def test_groups_choose_the_department_and_role(self, oidc_page: Page) -> None:
        page = oidc_page
        await page.goto("/console/oidc/start?next=/console")
        await provider_login(page, "alan")
        await expect(page.locator("header")).to_contain_text("oidc:alan")
        await expect(page.locator("header")).to_contain_text("audit-office")
        await expect(page.locator("header")).to_contain_text("Auditor")

    async def test_an_account_without_a_mapped_group_is_refused(self, oidc_page: Page) -> None:
        page = oidc_page
        await page.goto("/console/oidc/start")
        await provider_login(page, "eve")
        await expect(page.get_by_role("heading", level=1)).to_have_text("You could not be signed in")
        await expect(page.get_by_text("not given a role")).to_be_visible()
        await page.goto("/console")
        await expect(page).to_have_url(re.compile(r"/console/sign-in"))


class TestTheRequests:
    async def test_the_authorization_request_carries_pkce_nonce_and_state(self, oidc_site: OidcSite) -> None:
        async with httpx.AsyncClient(base_url=oidc_site.url) as http:
            started = await http.get("/console/oidc/start", params={"next": "/console/audit"})
        assert started.status_code == 303
        location = urlsplit(started.headers["location"])
        assert f"{location.scheme}://{location.netloc}" == oidc_site.issuer
        query = {name: values[0] for name, values in parse_qs(location.query).items()}
        assert query["response_type"] == "code"
        assert query["client_id"] == CLIENT_ID
        assert query["redirect_uri"] == f"{oidc_site.url}/console/oidc/callback"
        assert query["code_challenge_method"] == "S256"
        assert len(query["code_challenge"]) == 43
        assert query["nonce"]
        assert query["state"]
        cookie = started.headers["set-cookie"]
        assert "tellonce_console_oidc=" in cookie
        assert "HttpOnly" in cookie
        assert "SameSite=lax" in cookie

    async def test_a_callback_this_browser_did_not_start_is_refused(self, oidc_site: OidcSite) -> None:
        async with httpx.AsyncClient(base_url=oidc_site.url) as http:
            started = await http.get("/console/oidc/start")
            state = parse_qs(urlsplit(started.headers["location"]).query)["state"][0]
            http.cookies.clear()  # another browser: no flow cookie
            forged = await http.get("/console/oidc/callback", params={"code": "stolen", "state": state})
            assert forged.status_code == 403
            assert "You could not be signed in" in forged.text
            assert "tellonce_console=" not in forged.headers.get("set-cookie", "")
            tampered = await http.get(
                "/console/oidc/callback", params={"code": "x", "state": "forged.L2NvbnNvbGU"}
            )
            assert tampered.status_code == 403
