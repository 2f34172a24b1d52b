"""The console's cookies over TLS in Chromium: a real server speaking https on 127.0.0.1
with a self-signed certificate (the browser told to accept it), and a plain-http server on
the same address, which, like any plain-http answer on the console's host (or a sibling
subdomain), can set cookies that the browser then sends to the console over https.

Over https every console cookie is ``__Host-`` named, which such an answer cannot set, and
the bare names it can set are never read: a planted session (fixation) signs nobody in and
a planted pre-session forges no sign-in.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from service.auth import service as auth_service
from service.config import Settings
from service.db import Database
from service.policy import service as policy_service
from service.policy.loader import load_policy_folder
from tests.conftest import server_env
from tests.console.conftest import CONSOLE_POLICIES
from tests.fixtures.databases import create_scratch_database, drop_scratch_database
from tests.fixtures.server import LiveServer, start_server
from tests.fixtures.tls import ServerTls, self_signed

pytestmark = pytest.mark.e2e

CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')
BARE_NAMES = {"tellonce_console", "tellonce_console_pre", "tellonce_console_oidc"}


@dataclass(frozen=True)
class Owner:
    client_id: str
    secret: str


@dataclass
class TlsSite:
    server: LiveServer
    tls: ServerTls
    owner: Owner
    attacker: Owner

    @property
    def url(self) -> str:
        return self.server.base_url

    def http(self) -> httpx.AsyncClient:
        """A client of the site that trusts its certificate (the attacker's own browser)."""
        return httpx.AsyncClient(base_url=self.url, verify=self.tls.client_context(), timeout=10)


@pytest.fixture(scope="module")
async def tls_site(
    database_url: str, root_key: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[TlsSite]:
    url = await create_scratch_database(database_url)
    data = tmp_path_factory.mktemp("tls-data")
    env = server_env(url, data, root_key) | {"TELLONCE_POLICIES_DIR": str(CONSOLE_POLICIES)}
    try:
        people = []
        database = Database(Settings(env="test", database_url=url, data_dir=data))
        try:
            async with database.sessions.begin() as session:
                await policy_service.apply_folder(
                    session, load_policy_folder(CONSOLE_POLICIES), author="tests", reason="tls tests"
                )
                for department in ("register", "dvla"):
                    made = await auth_service.create_client(
                        session, department=department, roles=["data-owner"]
                    )
                    assert made.client_secret is not None
                    people.append(Owner(made.client_id, made.client_secret))
        finally:
            await database.dispose()
        tls = self_signed(data)
        server = await asyncio.to_thread(start_server, env, data / "server.log", timeout=90, tls=tls)
        try:
            yield TlsSite(server, tls, *people)
        finally:
            server.stop()
            assert "Traceback" not in server.log(), server.log()
    finally:
        await drop_scratch_database(url)


class _Planter(BaseHTTPRequestHandler):
    """``GET /plant?NAME=VALUE``: sets the cookie ``NAME=VALUE; Path=/console``, as a
    plain-http answer on the console's host can."""

    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        body = b"<!doctype html><title>planted</title><p>planted</p>"
        self.send_response(200)
        for name, (value, *_) in query.items():
            self.send_header("Set-Cookie", f"{name}={value}; Path=/console")
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def planter() -> Iterator[str]:
    """The plain-http server on 127.0.0.1 (another port: cookies are not kept per port)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Planter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
async def tls_context(browser: Browser, tls_site: TlsSite) -> AsyncIterator[BrowserContext]:
    context = await browser.new_context(
        base_url=tls_site.url, ignore_https_errors=True, locale="en-GB", timezone_id="UTC"
    )
    context.set_default_timeout(15_000)
    try:
        yield context
    finally:
        await context.close()


@pytest.fixture
async def tls_page(tls_context: BrowserContext) -> Page:
    return await tls_context.new_page()


async def plant(page: Page, planter: str, name: str, value: str) -> None:
    """The cookie ``name=value`` set by the plain-http answer, and kept by the browser."""
    await page.goto(f"{planter}/plant?{name}={value}")
    await expect(page.locator("p")).to_have_text("planted")
    kept = {c["name"]: c for c in await page.context.cookies()}
    assert kept[name]["value"] == value
    assert kept[name]["secure"] is False


def attackers(client: httpx.AsyncClient, name: str) -> str:
    """The value of the console cookie ``name`` the attacker's own client was given, under
    whichever name the console gave it."""
    value = client.cookies.get(f"__Host-{name}") or client.cookies.get(name)
    assert value
    return value


async def fill_sign_in(page: Page, owner: Owner) -> None:
    await page.goto("/console/sign-in")
    await page.get_by_label("Client ID").fill(owner.client_id)
    await page.get_by_label("Client secret").fill(owner.secret)


async def sign_in(page: Page, owner: Owner) -> None:
    await fill_sign_in(page, owner)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("header")).to_contain_text(owner.client_id)


class TestCookiesOverTls:
    async def test_signing_in_sets_only_host_prefixed_cookies(
        self, tls_page: Page, tls_site: TlsSite
    ) -> None:
        await tls_page.goto("/console/sign-in")
        cookies = {c["name"]: c for c in await tls_page.context.cookies()}
        assert set(cookies) == {"__Host-tellonce_console_pre"}
        await sign_in(tls_page, tls_site.owner)
        cookies = {c["name"]: c for c in await tls_page.context.cookies()}
        assert set(cookies) == {"__Host-tellonce_console"}
        session = cookies["__Host-tellonce_console"]
        # Host-only (no Domain: the browser shows the host itself, without a leading dot).
        assert (session["domain"], session["path"], session["secure"]) == ("127.0.0.1", "/", True)
        assert (session["httpOnly"], session["sameSite"]) == (True, "Strict")

        # Signing in again in the same browser ends the earlier session on the server.
        earlier = session["value"]
        await sign_in(tls_page, tls_site.attacker)
        async with tls_site.http() as replay:
            replay.cookies.set("__Host-tellonce_console", earlier)
            assert (await replay.get("/console")).status_code == 303

        await tls_page.get_by_role("button", name="Sign out").click()
        await expect(tls_page.get_by_role("status")).to_contain_text("You have signed out.")
        names = {c["name"] for c in await tls_page.context.cookies()}
        assert "__Host-tellonce_console" not in names
        assert not names & BARE_NAMES

    async def test_a_session_planted_over_plain_http_signs_nobody_in(
        self, tls_page: Page, tls_site: TlsSite, planter: str
    ) -> None:
        """Session fixation: the attacker's own live session, planted under the bare name."""
        async with tls_site.http() as attacker:
            form = await attacker.get("/console/sign-in")
            found = CSRF.search(form.text)
            assert found is not None
            signed_in = await attacker.post(
                "/console/sign-in",
                data={
                    "csrf_token": found.group(1),
                    "client_id": tls_site.attacker.client_id,
                    "client_secret": tls_site.attacker.secret,
                },
            )
            assert signed_in.status_code == 303
            token = attackers(attacker, "tellonce_console")
            assert (await attacker.get("/console")).status_code == 200
        await plant(tls_page, planter, "tellonce_console", token)
        await tls_page.goto("/console")
        await expect(tls_page).to_have_url(re.compile(r"/console/sign-in\?next=/console$"))
        await expect(tls_page.locator("header")).not_to_contain_text(tls_site.attacker.client_id)

    async def test_a_presession_planted_over_plain_http_forges_no_sign_in(
        self, tls_page: Page, tls_site: TlsSite, planter: str
    ) -> None:
        """Login CSRF: the attacker's own pre-session, planted under the bare name, and the
        sign-in form posted by the victim's browser with the attacker's credentials and the
        token of that pre-session. Refused: the victim is not signed in as the attacker."""
        async with tls_site.http() as attacker:
            form = await attacker.get("/console/sign-in")
            found = CSRF.search(form.text)
            assert found is not None
            attackers_token = found.group(1)
            pre = attackers(attacker, "tellonce_console_pre")
        await plant(tls_page, planter, "tellonce_console_pre", pre)
        await fill_sign_in(tls_page, tls_site.attacker)
        # The form now carries the token of the attacker's pre-session, not this browser's.
        await tls_page.locator("input[name=csrf_token]").evaluate(
            "(input, token) => { input.value = token; }", attackers_token
        )
        async with tls_page.expect_response(lambda r: r.request.method == "POST") as answer:
            await tls_page.get_by_role("button", name="Sign in").click()
        assert (await answer.value).status == 403
        await expect(tls_page.get_by_role("heading", level=1)).to_have_text("This form could not be accepted")
        assert "__Host-tellonce_console" not in {c["name"] for c in await tls_page.context.cookies()}
