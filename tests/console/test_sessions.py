"""Sign-in, sessions and CSRF, in process, over a stand-in backend (no other domain needed)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.console.config import ConsoleSettings
from service.console.models import ConsoleSession
from service.db import utcnow
from tests.console.fake_backend import FakeBackend, FakeClient

SECRET = "correct horse battery staple"
CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


@pytest.fixture
def backend(app: FastAPI) -> FakeBackend:
    fake = FakeBackend(
        clients={
            "owner-1": FakeClient(SECRET, "register", ("data-owner",)),
            "auditor-1": FakeClient(SECRET, "audit-office", ("auditor",)),
            "consumer-1": FakeClient(SECRET, "welfare", ("consumer",)),
            "mixed-1": FakeClient(SECRET, "register", ("consumer", "data-owner")),
            "old-1": FakeClient(SECRET, "register", ("data-owner",), disabled=True),
        }
    )
    app.state.console_backend = fake
    app.state.console_settings = ConsoleSettings(idle_timeout_seconds=900, absolute_timeout_seconds=3600)
    return fake


@pytest.fixture
async def https_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as http:
        yield http


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found is not None, page.text[:500]
    return found.group(1)


async def sign_in(
    client: httpx.AsyncClient, client_id: str, secret: str = SECRET, **extra: str
) -> httpx.Response:
    form = await client.get("/console/sign-in")
    data = {"csrf_token": csrf_of(form), "client_id": client_id, "client_secret": secret, **extra}
    return await client.post("/console/sign-in", data=data)


def set_cookie_header(response: httpx.Response, name: str) -> str:
    headers = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{name}=")]
    assert len(headers) == 1, response.headers.get_list("set-cookie")
    return headers[0]


async def stored_sessions(session: AsyncSession) -> list[ConsoleSession]:
    return list((await session.execute(select(ConsoleSession))).scalars())


class TestSignIn:
    async def test_cookie_is_httponly_strict_and_only_its_hash_is_stored(
        self, client: httpx.AsyncClient, backend: FakeBackend, session: AsyncSession
    ) -> None:
        response = await sign_in(client, "owner-1")
        assert response.status_code == 303
        assert response.headers["location"] == "/console"
        header = set_cookie_header(response, "tellonce_console")
        attributes = {part.strip().lower() for part in header.split(";")}
        assert {"httponly", "samesite=strict", "path=/console"} <= attributes
        assert "secure" not in attributes
        token = client.cookies["tellonce_console"]
        rows = await stored_sessions(session)
        assert [(r.client_id, r.department, r.roles) for r in rows] == [
            ("owner-1", "register", ["data-owner"])
        ]
        assert rows[0].token_hash == hashlib.sha256(token.encode()).hexdigest()
        assert token not in rows[0].token_hash
        home = await client.get("/console")
        assert home.status_code == 200
        assert "owner-1" in home.text

    async def test_cookie_is_secure_over_https(
        self, https_client: httpx.AsyncClient, backend: FakeBackend
    ) -> None:
        response = await sign_in(https_client, "owner-1")
        assert response.status_code == 303
        assert "secure" in {
            p.strip().lower() for p in set_cookie_header(response, "tellonce_console").split(";")
        }

    async def test_only_console_roles_are_kept_in_the_session(
        self, client: httpx.AsyncClient, backend: FakeBackend, session: AsyncSession
    ) -> None:
        assert (await sign_in(client, "mixed-1")).status_code == 303
        assert [r.roles for r in await stored_sessions(session)] == [["data-owner"]]

    @pytest.mark.parametrize(
        ("client_id", "secret", "status", "message"),
        [
            ("owner-1", "wrong", 401, "The client ID or secret is not right"),
            ("nobody", SECRET, 401, "The client ID or secret is not right"),
            ("old-1", SECRET, 401, "This client is disabled"),
            ("consumer-1", SECRET, 403, "role (consumer) cannot sign in to the console"),
        ],
    )
    async def test_refusals_are_shown_on_the_form(
        self,
        client: httpx.AsyncClient,
        backend: FakeBackend,
        session: AsyncSession,
        client_id: str,
        secret: str,
        status: int,
        message: str,
    ) -> None:
        response = await sign_in(client, client_id, secret)
        assert response.status_code == status
        assert response.headers["content-type"].startswith("text/html")
        assert 'class="error-summary"' in response.text
        assert 'id="client_id-error"' in response.text
        assert message in response.text
        assert secret not in response.text
        assert "tellonce_console" not in client.cookies
        assert await stored_sessions(session) == []

    async def test_empty_fields_are_each_reported(
        self, client: httpx.AsyncClient, backend: FakeBackend
    ) -> None:
        response = await sign_in(client, "", "")
        assert response.status_code == 400
        assert '<a href="#client_id">Enter your client ID</a>' in response.text
        assert '<a href="#client_secret">Enter your client secret</a>' in response.text

    async def test_sign_in_form_needs_its_presession_token(
        self, client: httpx.AsyncClient, backend: FakeBackend
    ) -> None:
        form = await client.get("/console/sign-in")
        token = csrf_of(form)
        client.cookies.clear()
        # A forged sign-in from another site has no pre-session cookie to match.
        response = await client.post(
            "/console/sign-in", data={"csrf_token": token, "client_id": "owner-1", "client_secret": SECRET}
        )
        assert response.status_code == 403
        assert "This form could not be accepted" in response.text
        assert "tellonce_console" not in client.cookies

    @pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/console", "/v1/citizens"])
    async def test_next_never_leaves_the_console(
        self, client: httpx.AsyncClient, backend: FakeBackend, target: str
    ) -> None:
        response = await sign_in(client, "owner-1", next=target)
        assert response.status_code == 303
        assert response.headers["location"] == "/console"

    async def test_next_within_the_console_is_followed(
        self, client: httpx.AsyncClient, backend: FakeBackend
    ) -> None:
        response = await sign_in(client, "owner-1", next="/console/audit")
        assert response.headers["location"] == "/console/audit"


class TestSessionLifetime:
    async def test_idle_session_expires(
        self, client: httpx.AsyncClient, backend: FakeBackend, session: AsyncSession
    ) -> None:
        await sign_in(client, "owner-1")
        await session.execute(update(ConsoleSession).values(last_seen_at=utcnow() - timedelta(seconds=901)))
        response = await client.get("/console/agreements")
        assert response.status_code == 303
        assert response.headers["location"] == "/console/sign-in?next=/console/agreements"
        assert await stored_sessions(session) == []

    async def test_session_in_use_is_kept_and_touched(
        self, client: httpx.AsyncClient, backend: FakeBackend, session: AsyncSession
    ) -> None:
        await sign_in(client, "owner-1")
        earlier = utcnow() - timedelta(seconds=600)
        await session.execute(update(ConsoleSession).values(last_seen_at=earlier))
        assert (await client.get("/console")).status_code == 200
        [row] = await stored_sessions(session)
        await session.refresh(row)
        assert row.last_seen_at > earlier + timedelta(seconds=500)

    async def test_old_session_expires_however_busy(
        self, client: httpx.AsyncClient, backend: FakeBackend, session: AsyncSession
    ) -> None:
        await sign_in(client, "owner-1")
        await session.execute(update(ConsoleSession).values(created_at=utcnow() - timedelta(seconds=3601)))
        assert (await client.get("/console")).status_code == 303

    async def test_sign_out_ends_the_session_for_good(
        self, client: httpx.AsyncClient, backend: FakeBackend, session: AsyncSession
    ) -> None:
        await sign_in(client, "owner-1")
        token = client.cookies["tellonce_console"]
        home = await client.get("/console")
        response = await client.post("/console/sign-out", data={"csrf_token": csrf_of(home)})
        assert response.status_code == 303
        assert response.headers["location"] == "/console/sign-in?signed_out=1"
        assert await stored_sessions(session) == []
        # The old cookie, replayed, signs nobody in.
        client.cookies.set("tellonce_console", token, path="/console")
        assert (await client.get("/console")).status_code == 303

    async def test_disabling_the_client_ends_its_sessions(
        self, client: httpx.AsyncClient, backend: FakeBackend, session: AsyncSession
    ) -> None:
        await sign_in(client, "owner-1")
        backend.clients["owner-1"].disabled = True
        assert (await client.get("/console")).status_code == 303
        assert await stored_sessions(session) == []


class TestCsrf:
    async def test_post_without_token_is_refused_with_an_html_page(
        self, client: httpx.AsyncClient, backend: FakeBackend
    ) -> None:
        await sign_in(client, "owner-1")
        response = await client.post("/console/agreements/new", data={"id": "x-1", "consumer": "welfare"})
        assert response.status_code == 403
        assert response.headers["content-type"].startswith("text/html")
        assert '<h1 class="heading-l">This form could not be accepted</h1>' in response.text
        assert backend.versions_by_id == {}

    async def test_token_of_another_session_is_refused(
        self, app: FastAPI, client: httpx.AsyncClient, backend: FakeBackend
    ) -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as other:
            await sign_in(other, "auditor-1")
            other_token = csrf_of(await other.get("/console"))
        await sign_in(client, "owner-1")
        mine = csrf_of(await client.get("/console"))
        assert mine != other_token
        refused = await client.post("/console/sign-out", data={"csrf_token": other_token})
        assert refused.status_code == 403
        assert (await client.get("/console")).status_code == 200

    async def test_verify_now_needs_the_token(self, client: httpx.AsyncClient, backend: FakeBackend) -> None:
        await sign_in(client, "auditor-1")
        assert (await client.post("/console/audit/integrity/verify")).status_code == 403
        assert backend.verified == []
        page = await client.get("/console/audit/integrity")
        done = await client.post("/console/audit/integrity/verify", data={"csrf_token": csrf_of(page)})
        assert done.status_code == 200
        assert backend.verified == ["auditor-1"]


class TestPages:
    async def test_security_headers(self, client: httpx.AsyncClient, backend: FakeBackend) -> None:
        response = await client.get("/console/sign-in")
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy
        assert "script-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["cache-control"] == "no-store"

    async def test_role_is_checked_on_every_section(
        self, client: httpx.AsyncClient, backend: FakeBackend
    ) -> None:
        await sign_in(client, "owner-1")
        for path in ("/console/citizen", "/console/audit/integrity", "/console/audit/export.csv"):
            response = await client.get(path)
            assert response.status_code == 403, path
            assert "You cannot see this page" in response.text

    async def test_unknown_console_page_is_an_html_404(
        self, client: httpx.AsyncClient, backend: FakeBackend
    ) -> None:
        response = await client.get("/console/no/such/page")
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("text/html")
        assert "Page not found" in response.text

    async def test_static_files_are_ours_and_nothing_else(
        self, client: httpx.AsyncClient, backend: FakeBackend
    ) -> None:
        css = await client.get("/console/static/console.css")
        assert css.status_code == 200
        assert css.headers["content-type"].startswith("text/css")
        missing = await client.get("/console/static/..%2Fsessions.py")
        assert missing.status_code == 404
