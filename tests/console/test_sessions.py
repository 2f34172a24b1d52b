"""Sign-in, sessions and CSRF, in process, over the real services on the test's rolled-back
transaction: clients made by the auth domain, pages answered by the policy and audit domains."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartParser

from service.audit.models import AuditEntryRow
from service.audit.search import get_audit_access
from service.auth import service as auth_service
from service.auth.models import AuthFailure
from service.auth.secrets import loggable_client_id
from service.console import router as console_router
from service.console import web as console_web
from service.console.config import ConsoleSettings
from service.console.models import ConsoleSession
from service.db import utcnow
from service.policy import repository as policy_repository
from tests.fixtures import statuses
from tests.fixtures.audit import TransactionAudit

CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


@dataclass(frozen=True)
class Person:
    client_id: str
    secret: str


People = dict[str, Person]
# name -> (department, roles, disabled)
CLIENTS = {
    "owner-1": ("register", ("data-owner",), False),
    "auditor-1": ("audit-office", ("auditor",), False),
    "consumer-1": ("welfare", ("consumer",), False),
    "mixed-1": ("register", ("consumer", "data-owner"), False),
    "old-1": ("register", ("data-owner",), True),
}


@pytest.fixture
async def people(app: FastAPI, session: AsyncSession, catalog_loaded: None) -> People:
    """Real clients in the test's transaction, by name; ``nobody`` is not registered."""
    app.state.console_settings = ConsoleSettings(idle_timeout_seconds=900, absolute_timeout_seconds=3600)
    app.dependency_overrides[get_audit_access] = TransactionAudit(session).access
    made: People = {"nobody": Person("tc_nobody", "no-secret-at-all")}
    for name, (department, roles, disabled) in CLIENTS.items():
        created = await auth_service.create_client(session, department=department, roles=list(roles))
        assert created.client_secret is not None
        if disabled:
            await auth_service.disable_client(session, "operator:test", created.client_id)
        made[name] = Person(created.client_id, created.client_secret)
    return made


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
    client: httpx.AsyncClient, person: Person, secret: str | None = None, **extra: str
) -> httpx.Response:
    form = await client.get("/console/sign-in")
    data = {
        "csrf_token": csrf_of(form),
        "client_id": person.client_id,
        "client_secret": person.secret if secret is None else secret,
        **extra,
    }
    return await client.post("/console/sign-in", data=data)


def set_cookie_header(response: httpx.Response, name: str) -> str:
    headers = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{name}=")]
    assert len(headers) == 1, response.headers.get_list("set-cookie")
    return headers[0]


async def audit_queries(session: AsyncSession) -> list[str]:
    """The clients named by audit-query entries, oldest first."""
    statement = (
        select(AuditEntryRow.client_id)
        .where(AuditEntryRow.action == "audit-query")
        .order_by(AuditEntryRow.id)
    )
    return list((await session.execute(statement)).scalars())


async def stored_sessions(session: AsyncSession) -> list[ConsoleSession]:
    return list((await session.execute(select(ConsoleSession))).scalars())


class TestSignIn:
    async def test_cookie_is_httponly_strict_and_only_its_hash_is_stored(
        self, client: httpx.AsyncClient, people: People, session: AsyncSession
    ) -> None:
        response = await sign_in(client, people["owner-1"])
        assert response.status_code == 303
        assert response.headers["location"] == "/console"
        header = set_cookie_header(response, "tellonce_console")
        attributes = {part.strip().lower() for part in header.split(";")}
        assert {"httponly", "samesite=strict", "path=/console"} <= attributes
        assert "secure" not in attributes
        token = client.cookies["tellonce_console"]
        rows = await stored_sessions(session)
        assert [(r.client_id, r.department, r.roles) for r in rows] == [
            (people["owner-1"].client_id, "register", ["data-owner"])
        ]
        assert rows[0].token_hash == hashlib.sha256(token.encode()).hexdigest()
        assert token not in rows[0].token_hash
        home = await client.get("/console")
        assert home.status_code == 200
        assert people["owner-1"].client_id in home.text

    async def test_over_https_every_cookie_is_host_prefixed(
        self, https_client: httpx.AsyncClient, people: People
    ) -> None:
        """``__Host-``: the browser keeps it only Secure, for ``/`` and with no Domain, so
        neither a sibling subdomain nor a plain-http answer can plant it."""
        form = await https_client.get("/console/sign-in")
        pre = set_cookie_header(form, "__Host-tellonce_console_pre")
        response = await sign_in(https_client, people["owner-1"])
        assert response.status_code == 303
        session = set_cookie_header(response, "__Host-tellonce_console")
        cleared = set_cookie_header(response, "__Host-tellonce_console_pre")
        for header in (pre, session, cleared):
            attributes = {part.strip().lower() for part in header.split(";")}
            assert {"secure", "path=/", "httponly", "samesite=strict"} <= attributes, header
            assert not any(a.startswith("domain") for a in attributes), header
        every = response.headers.get_list("set-cookie") + form.headers.get_list("set-cookie")
        assert not any(h.startswith("tellonce_") for h in every), every
        assert (await https_client.get("/console")).status_code == 200

    async def test_over_https_a_planted_bare_session_cookie_signs_nobody_in(
        self, client: httpx.AsyncClient, https_client: httpx.AsyncClient, people: People
    ) -> None:
        """Session fixation: an attacker's own live session, planted under the bare name (as
        a sibling subdomain or a plain-http answer can), is not read over https."""
        assert (await sign_in(client, people["owner-1"])).status_code == 303
        attackers = client.cookies["tellonce_console"]
        assert (await client.get("/console")).status_code == 200  # live over http
        https_client.cookies.set("tellonce_console", attackers, path="/console")
        response = await https_client.get("/console")
        assert response.status_code == 303
        assert response.headers["location"].startswith("/console/sign-in")

    async def test_over_https_a_planted_bare_presession_cookie_forges_no_sign_in(
        self,
        client: httpx.AsyncClient,
        https_client: httpx.AsyncClient,
        people: People,
        session: AsyncSession,
    ) -> None:
        """Login CSRF: the attacker plants its own pre-session under the bare name, then has
        the victim's browser post the sign-in form with the attacker's credentials and the
        token that matches that pre-session. Over https it is refused."""
        form = await client.get("/console/sign-in")
        https_client.cookies.set(
            "tellonce_console_pre",
            client.cookies["tellonce_console_pre"],
            path="/console",
        )
        forged = {
            "csrf_token": csrf_of(form),
            "client_id": people["owner-1"].client_id,
            "client_secret": people["owner-1"].secret,
        }
        response = await https_client.post("/console/sign-in", data=forged)
        assert response.status_code == 403
        assert "This form could not be accepted" in response.text
        assert await stored_sessions(session) == []
        # The same form over plain http, where the names stay bare, is the ordinary sign-in.
        assert (await client.post("/console/sign-in", data=forged)).status_code == 303

    async def test_only_console_roles_are_kept_in_the_session(
        self, client: httpx.AsyncClient, people: People, session: AsyncSession
    ) -> None:
        assert (await sign_in(client, people["mixed-1"])).status_code == 303
        assert [r.roles for r in await stored_sessions(session)] == [["data-owner"]]

    @pytest.mark.parametrize(
        ("name", "secret", "status", "message"),
        [
            ("owner-1", "wrong", 401, "The client ID or client secret is not right"),
            ("nobody", None, 401, "The client ID or client secret is not right"),
            ("old-1", None, 401, "This client has been disabled"),
            ("consumer-1", None, 403, "role (consumer) cannot sign in to the console"),
        ],
    )
    async def test_refusals_are_shown_on_the_form(
        self,
        client: httpx.AsyncClient,
        people: People,
        session: AsyncSession,
        name: str,
        secret: str | None,
        status: int,
        message: str,
    ) -> None:
        response = await sign_in(client, people[name], secret)
        assert response.status_code == status
        assert response.headers["content-type"].startswith("text/html")
        assert 'class="error-summary"' in response.text
        assert 'id="client_id-error"' in response.text
        assert message in response.text
        assert (secret or people[name].secret) not in response.text
        assert "tellonce_console" not in client.cookies
        assert await stored_sessions(session) == []

    async def test_a_secret_in_the_client_id_box_is_never_logged_or_stored(
        self,
        client: httpx.AsyncClient,
        people: People,
        session: AsyncSession,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Someone pastes their secret into both boxes: the refusal is logged and counted
        for the throttle under a digest of that text, never the text itself."""
        pasted = people["owner-1"].secret
        with caplog.at_level(logging.WARNING, logger="tellonce"):
            response = await sign_in(client, Person(pasted, pasted))
        assert response.status_code == 401
        assert pasted not in caplog.text
        [refused] = [r for r in caplog.records if r.getMessage() == "console sign-in refused"]
        logged = getattr(refused, "client_id", "")
        assert logged == loggable_client_id(pasted)
        assert logged.startswith("sha256:")
        subjects = (await session.execute(select(AuthFailure.subject))).scalars().all()
        assert subjects
        assert not any(pasted in subject for subject in subjects)
        # A well-formed id is kept as it is, so an operator can see who is being guessed at.
        assert loggable_client_id(people["owner-1"].client_id) == people["owner-1"].client_id

    async def test_empty_fields_are_each_reported(self, client: httpx.AsyncClient, people: People) -> None:
        response = await sign_in(client, Person("", ""))
        assert response.status_code == 400
        assert '<a href="#client_id">Enter your client ID</a>' in response.text
        assert '<a href="#client_secret">Enter your client secret</a>' in response.text

    async def test_sign_in_form_needs_its_presession_token(
        self, client: httpx.AsyncClient, people: People
    ) -> None:
        form = await client.get("/console/sign-in")
        token = csrf_of(form)
        client.cookies.clear()
        # A forged sign-in from another site has no pre-session cookie to match.
        response = await client.post(
            "/console/sign-in",
            data={
                "csrf_token": token,
                "client_id": people["owner-1"].client_id,
                "client_secret": people["owner-1"].secret,
            },
        )
        assert response.status_code == 403
        assert "This form could not be accepted" in response.text
        assert "tellonce_console" not in client.cookies

    @pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/console", "/v1/citizens"])
    async def test_next_never_leaves_the_console(
        self, client: httpx.AsyncClient, people: People, target: str
    ) -> None:
        response = await sign_in(client, people["owner-1"], next=target)
        assert response.status_code == 303
        assert response.headers["location"] == "/console"

    async def test_next_within_the_console_is_followed(
        self, client: httpx.AsyncClient, people: People
    ) -> None:
        response = await sign_in(client, people["owner-1"], next="/console/audit")
        assert response.headers["location"] == "/console/audit"

    async def test_a_signed_out_visit_returns_to_the_page_with_its_query(
        self, client: httpx.AsyncClient, people: People
    ) -> None:
        """The query of the page asked for survives sign-in: a filtered audit search comes
        back filtered, its own escapes intact."""
        asked = "/console/audit?consumer=dwp&purpose=benefit%20eligibility"
        response = await client.get(asked)
        assert response.status_code == 303
        location = response.headers["location"]
        assert location == (
            "/console/sign-in?next=/console/audit%3Fconsumer%3Ddwp%26purpose%3Dbenefit%2520eligibility"
        )
        form = await client.get(location)
        assert 'value="/console/audit?consumer=dwp&amp;purpose=benefit%20eligibility"' in form.text
        (target,) = httpx.URL(location).params.get_list("next")
        response = await sign_in(client, people["owner-1"], next=target)
        assert response.headers["location"] == asked

    async def test_a_query_that_would_make_next_too_long_is_dropped(
        self, client: httpx.AsyncClient, people: People
    ) -> None:
        """Over the limit of ``next`` (1024 bytes), the page's path is kept without its query
        rather than sending the person to the console's home page."""
        response = await client.get("/console/audit?consumer=" + "x" * 1024)
        assert response.headers["location"] == "/console/sign-in?next=/console/audit"
        within = "/console/audit?consumer=" + "x" * (1024 - len("/console/audit?consumer="))
        response = await client.get(within)
        (target,) = httpx.URL(response.headers["location"]).params.get_list("next")
        assert target == within


class TestSessionLifetime:
    async def test_idle_session_expires(
        self, client: httpx.AsyncClient, people: People, session: AsyncSession
    ) -> None:
        await sign_in(client, people["owner-1"])
        await session.execute(update(ConsoleSession).values(last_seen_at=utcnow() - timedelta(seconds=901)))
        response = await client.get("/console/agreements")
        assert response.status_code == 303
        assert response.headers["location"] == "/console/sign-in?next=/console/agreements"
        assert await stored_sessions(session) == []

    async def test_session_in_use_is_kept_and_touched(
        self, client: httpx.AsyncClient, people: People, session: AsyncSession
    ) -> None:
        await sign_in(client, people["owner-1"])
        earlier = utcnow() - timedelta(seconds=600)
        await session.execute(update(ConsoleSession).values(last_seen_at=earlier))
        assert (await client.get("/console")).status_code == 200
        [row] = await stored_sessions(session)
        await session.refresh(row)
        assert row.last_seen_at > earlier + timedelta(seconds=500)

    async def test_old_session_expires_however_busy(
        self, client: httpx.AsyncClient, people: People, session: AsyncSession
    ) -> None:
        await sign_in(client, people["owner-1"])
        await session.execute(update(ConsoleSession).values(created_at=utcnow() - timedelta(seconds=3601)))
        assert (await client.get("/console")).status_code == 303

    async def test_sign_out_ends_the_session_for_good(
        self, client: httpx.AsyncClient, people: People, session: AsyncSession
    ) -> None:
        await sign_in(client, people["owner-1"])
        token = client.cookies["tellonce_console"]
        home = await client.get("/console")
        response = await client.post("/console/sign-out", data={"csrf_token": csrf_of(home)})
        assert response.status_code == 303
        assert response.headers["location"] == "/console/sign-in?signed_out=1"
        assert await stored_sessions(session) == []
        # The old cookie, replayed, signs nobody in.
        client.cookies.set("tellonce_console", token, path="/console")
        assert (await client.get("/console")).status_code == 303

    @pytest.mark.parametrize("again", ["owner-1", "auditor-1"])
    async def test_signing_in_again_ends_the_browsers_earlier_session(
        self, client: httpx.AsyncClient, people: People, session: AsyncSession, again: str
    ) -> None:
        """As the same person or another, a new sign-in in a browser ends (server-side) the
        session that browser had: its cookie, kept by anyone, signs nobody in."""
        assert (await sign_in(client, people["owner-1"])).status_code == 303
        earlier = client.cookies["tellonce_console"]
        assert (await sign_in(client, people[again])).status_code == 303
        later = client.cookies["tellonce_console"]
        assert later != earlier
        rows = await stored_sessions(session)
        assert [r.token_hash for r in rows] == [hashlib.sha256(later.encode()).hexdigest()]
        assert people[again].client_id in (await client.get("/console")).text
        client.cookies.set("tellonce_console", earlier, path="/console")
        assert (await client.get("/console")).status_code == 303

    async def test_disabling_the_client_ends_its_sessions(
        self, client: httpx.AsyncClient, people: People, session: AsyncSession
    ) -> None:
        await sign_in(client, people["owner-1"])
        await auth_service.disable_client(session, "operator:test", people["owner-1"].client_id)
        assert (await client.get("/console")).status_code == 303
        assert await stored_sessions(session) == []


class TestCsrf:
    async def test_post_without_token_is_refused_with_an_html_page(
        self, client: httpx.AsyncClient, people: People, session: AsyncSession
    ) -> None:
        await sign_in(client, people["owner-1"])
        response = await client.post("/console/agreements/new", data={"id": "x-1", "consumer": "welfare"})
        assert response.status_code == 403
        assert response.headers["content-type"].startswith("text/html")
        assert '<h1 class="heading-l">This form could not be accepted</h1>' in response.text
        assert await policy_repository.current_version(session, "x-1") is None

    async def test_token_of_another_session_is_refused(
        self, app: FastAPI, client: httpx.AsyncClient, people: People
    ) -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as other:
            await sign_in(other, people["auditor-1"])
            other_token = csrf_of(await other.get("/console"))
        await sign_in(client, people["owner-1"])
        mine = csrf_of(await client.get("/console"))
        assert mine != other_token
        refused = await client.post("/console/sign-out", data={"csrf_token": other_token})
        assert refused.status_code == 403
        assert (await client.get("/console")).status_code == 200

    async def test_a_non_ascii_token_is_refused_not_a_server_error(
        self, client: httpx.AsyncClient, people: People, session: AsyncSession
    ) -> None:
        await client.get("/console/sign-in")  # the pre-session cookie
        response = await client.post(
            "/console/sign-in",
            data={
                "csrf_token": "é",
                "client_id": people["owner-1"].client_id,
                "client_secret": people["owner-1"].secret,
            },
        )
        assert response.status_code == 403
        assert "This form could not be accepted" in response.text
        assert await stored_sessions(session) == []

    async def test_verify_now_needs_the_token(
        self, client: httpx.AsyncClient, people: People, session: AsyncSession
    ) -> None:
        await sign_in(client, people["auditor-1"])
        assert (await client.post("/console/audit/integrity/verify")).status_code == 403
        assert await audit_queries(session) == []
        page = await client.get("/console/audit/integrity")
        done = await client.post("/console/audit/integrity/verify", data={"csrf_token": csrf_of(page)})
        assert done.status_code == 200
        # The outcome of the same check as `tellonce audit verify` (which one depends on what
        # the test database already holds: an empty log is refused, as by the CLI).
        assert "were hashed again" in done.text or "Verification failed: " in done.text
        # The verification is itself an audit query, by the signed-in client.
        assert await audit_queries(session) == [people["auditor-1"].client_id]


class TestPostedForms:
    """A posted form is read once, with the console's limits, and closed when its page is
    done: a file sent with it (no console form asks for one) does not keep its spooled
    temporary file open until the garbage collector finds it."""

    @pytest.fixture
    def uploads(self, monkeypatch: pytest.MonkeyPatch) -> list[UploadFile]:
        """Every file of every multipart form parsed, as Starlette's parser made it."""
        made: list[UploadFile] = []
        parse = MultiPartParser.parse

        async def recording(parser: MultiPartParser) -> FormData:
            form = await parse(parser)
            made.extend(value for _, value in form.multi_items() if isinstance(value, UploadFile))
            return form

        monkeypatch.setattr(MultiPartParser, "parse", recording)
        return made

    @pytest.mark.parametrize(
        ("person", "path", "status"),
        [
            # Read by the page itself, which checks the pre-session's token.
            ("owner-1", "/console/sign-in", 303),
            # Read by the CSRF check alone.
            ("owner-1", "/console/sign-out", 303),
            ("auditor-1", "/console/audit/integrity/verify", 200),
            # Read by the CSRF check, then by the page.
            ("owner-1", "/console/agreements/new", 422),
            ("owner-1", "/console/agreements/no-such/revoke", 400),
            ("owner-1", "/console/releases/check", 422),
        ],
    )
    async def test_an_uploaded_file_is_closed_once_the_page_is_sent(
        self,
        client: httpx.AsyncClient,
        people: People,
        uploads: list[UploadFile],
        person: str,
        path: str,
        status: int,
    ) -> None:
        fields = {"client_id": people[person].client_id, "client_secret": people[person].secret}
        if path == "/console/sign-in":
            fields["csrf_token"] = csrf_of(await client.get("/console/sign-in"))
        else:
            await sign_in(client, people[person])
            fields = {"csrf_token": csrf_of(await client.get("/console"))}
        files = {"attachment": ("notes.txt", b"not asked for" * 100, "text/plain")}
        response = await client.post(path, data=fields, files=files)
        assert response.status_code == status, response.text[:500]
        assert len(uploads) == 1
        assert uploads[0].file.closed

    async def test_a_form_refused_for_its_token_still_has_its_file_closed(
        self, client: httpx.AsyncClient, people: People, uploads: list[UploadFile]
    ) -> None:
        await sign_in(client, people["owner-1"])
        files = {"attachment": ("notes.txt", b"x", "text/plain")}
        response = await client.post("/console/agreements/new", data={"csrf_token": "0" * 64}, files=files)
        assert response.status_code == 403
        assert len(uploads) == 1
        assert uploads[0].file.closed

    @pytest.mark.parametrize(
        ("part", "refusal"),
        [
            ("field", "Too many fields. Maximum number of fields is 1000."),
            ("file", "Too many files. Maximum number of files is 1000."),
        ],
    )
    async def test_a_form_over_a_limit_is_an_html_400(
        self, client: httpx.AsyncClient, people: People, uploads: list[UploadFile], part: str, refusal: str
    ) -> None:
        await sign_in(client, people["owner-1"])
        fields = {"csrf_token": csrf_of(await client.get("/console"))}
        files = [("attachment", ("notes.txt", b"x", "text/plain"))]
        if part == "field":
            fields |= {f"p{n}": "x" for n in range(1000)}
        else:
            files *= 1001
        response = await client.post("/console/agreements/new", data=fields, files=files)
        assert response.status_code == 400
        assert response.headers["content-type"].startswith("text/html")
        assert '<h1 class="heading-l">Bad Request</h1>' in response.text
        assert refusal in response.text
        assert uploads == []  # refused while parsing: Starlette's parser closed its own files


class TestPages:
    async def test_security_headers(self, client: httpx.AsyncClient, people: People) -> None:
        response = await client.get("/console/sign-in")
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy
        assert "script-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["cache-control"] == "no-store"

    @pytest.mark.parametrize("signed_in", [True, False])
    async def test_an_unexpected_error_is_the_consoles_500_page_with_its_headers(
        self,
        app: FastAPI,
        people: People,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
        signed_in: bool,
    ) -> None:
        """Not the API's problem+json: the console's own page, its security headers, and
        the request id to quote; nothing of the error itself."""

        def broken(*_args: object, **_kwargs: object) -> None:
            raise RuntimeError("broken on purpose deadbeef")

        # Broken on purpose: its 500s are left out of tests/test_openapi.py's comparison.
        statuses.forget(app.state.metrics)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as browser:
            if signed_in:
                assert (await sign_in(browser, people["owner-1"])).status_code == 303
                monkeypatch.setattr(console_router, "catalog_of", broken)
                path = "/console"
            else:
                monkeypatch.setattr(console_router, "oidc_enabled", broken)
                path = "/console/sign-in"
            with caplog.at_level(logging.ERROR, logger="tellonce"):
                response = await browser.get(path, headers={"X-Request-ID": "req-0123456789"})
        assert response.status_code == 500
        assert response.headers["content-type"].startswith("text/html")
        assert '<h1 class="heading-l">Internal Server Error</h1>' in response.text
        assert "Quote request id req-0123456789 to the operator." in response.text
        assert response.headers["x-request-id"] == "req-0123456789"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["cache-control"] == "no-store"
        assert "deadbeef" not in response.text
        assert "RuntimeError" not in response.text
        assert (people["owner-1"].client_id in response.text) is signed_in
        assert "unhandled error" in caplog.text

    async def test_a_500_whose_page_cannot_be_made_is_still_answered(
        self, app: FastAPI, people: People, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The error may be in the console's own templates: then the page is the API's 500."""

        def broken(*_args: object, **_kwargs: object) -> None:
            raise RuntimeError("broken on purpose deadbeef")

        statuses.forget(app.state.metrics)
        monkeypatch.setattr(console_router, "oidc_enabled", broken)
        monkeypatch.setattr(console_web, "error_page", broken)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as browser:
            response = await browser.get("/console/sign-in", headers={"X-Request-ID": "req-0123456789"})
        assert response.status_code == 500
        assert response.headers["content-type"] == "application/problem+json"
        assert "req-0123456789" in response.json()["detail"]
        assert "deadbeef" not in response.text

    async def test_role_is_checked_on_every_section(self, client: httpx.AsyncClient, people: People) -> None:
        await sign_in(client, people["owner-1"])
        for path in ("/console/citizen", "/console/audit/integrity", "/console/audit/export.csv"):
            response = await client.get(path)
            assert response.status_code == 403, path
            assert "You cannot see this page" in response.text

    async def test_unknown_console_page_is_an_html_404(
        self, client: httpx.AsyncClient, people: People
    ) -> None:
        response = await client.get("/console/no/such/page")
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("text/html")
        assert "Page not found" in response.text

    async def test_static_files_are_ours_and_nothing_else(
        self, client: httpx.AsyncClient, people: People
    ) -> None:
        css = await client.get("/console/static/console.css")
        assert css.status_code == 200
        assert css.headers["content-type"].startswith("text/css")
        missing = await client.get("/console/static/..%2Fsessions.py")
        assert missing.status_code == 404

    @pytest.mark.parametrize("path", ["/console/sign-in", "/console/agreements/new"])
    async def test_a_posted_form_that_does_not_parse_is_an_html_400(
        self, client: httpx.AsyncClient, people: People, path: str
    ) -> None:
        """A multipart body without its boundary: Starlette's own 400, shown as a console
        page with the console's headers rather than as problem+json."""
        await sign_in(client, people["owner-1"])
        response = await client.post(
            path, content=b"csrf_token=x", headers={"content-type": "multipart/form-data"}
        )
        assert response.status_code == 400
        assert response.headers["content-type"].startswith("text/html")
        assert '<h1 class="heading-l">Bad Request</h1>' in response.text
        assert "Missing boundary in multipart." in response.text
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]

    @pytest.mark.parametrize(
        ("path", "allowed"), [("/console/sign-in", "GET, HEAD, POST"), ("/console", "GET, HEAD")]
    )
    async def test_a_method_a_page_does_not_take_is_an_html_405(
        self, client: httpx.AsyncClient, path: str, allowed: str
    ) -> None:
        """Refused by routing, before any console route runs: still a console page with the
        console's headers, while the API's 405 stays problem+json."""
        refused = await client.put(path)
        assert refused.status_code == 405
        assert refused.headers["content-type"].startswith("text/html")
        assert '<h1 class="heading-l">Method Not Allowed</h1>' in refused.text
        assert refused.headers["allow"] == allowed
        assert refused.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in refused.headers["content-security-policy"]
        api = await client.put("/v1/catalog")
        assert (api.status_code, api.headers["content-type"]) == (405, "application/problem+json")
