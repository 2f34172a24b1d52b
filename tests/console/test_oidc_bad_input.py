"""Hostile input to the console with single sign-on on, in process, over the real services
on the test's rolled-back transaction, with property-based probes (hypothesis).

``test_bad_input.py`` probes every console page with single sign-on off, where the
``/console/oidc/*`` routes are not found. Here it is configured as
``tests/console/test_oidc.py`` configures it, and the OpenID provider is played by
``httpx.MockTransport`` (``Provider``), which keeps to the protocol: it issues a code
only for an authorization request the console made, once, and checks the PKCE verifier
when it is redeemed. What a browser would do at the provider, ``Provider.authorize`` does.

The promise for every input: never a 5xx nor an error in the log; a refusal is an HTML
page with a 4xx (or a redirect to sign-in); nothing sent is shown back unescaped; no
redirect or onward link leads off the site (other than to the provider itself); and the
log never holds a code, a ``state`` or a cookie token that was sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, quote_from_bytes, urljoin, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from pydantic import SecretStr
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from service.console.config import ConsoleSettings
from service.console.models import ConsoleSession
from service.console.oidc import OidcSignIn
from service.console.router import CONSOLE_HOME, _safe_next
from service.console.sessions import token_hash
from service.db import utcnow
from tests.console.test_sessions import csrf_of
from tests.fixtures.console import CITIZEN, fuzz_ground

SITE = "http://testserver"
ISSUER = "https://id.example"
CLIENT_ID = "tellonce-console"
CLIENT_SECRET = "console-secret-for-tests-only"
AGREEMENT = "identity-for-welfare"  # register's, in tests/fixtures/policies
SIGNING_KEY = RSAKey.generate_key(2048, parameters={"kid": "provider-key-1"})
ROLE_MAP = """\
claim: groups
rules:
  - {group: register-owners, department: register, role: data-owner}
  - {group: portal-staff, department: portal, role: citizen-portal}
"""
ACCOUNTS: dict[str, dict[str, Any]] = {
    "ada": {"name": "Ada Lovelace", "groups": ["register-owners"]},
    "grace": {"name": "Grace Hopper", "groups": ["portal-staff"]},
}
# Markup that would run if a page showed it unescaped; hostile values carry it.
MARKUP = "<x-fuzz>"
# Examples per property: enough to find what breaks, few enough to keep the file fast.
EXAMPLES = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@dataclass
class Grant:
    nonce: str
    challenge: str
    redirect_uri: str
    account: str


@dataclass
class Provider:
    """An OpenID provider at ``ISSUER``: discovery, keys, the token endpoint (codes are
    single use and PKCE-checked) and the end-session endpoint."""

    grants: dict[str, Grant] = field(default_factory=dict)
    # Claims added to (or replacing those of) the ID tokens it issues.
    extra_claims: dict[str, Any] = field(default_factory=dict)

    def authorize(self, location: str, account: str = "ada") -> tuple[str, str]:
        """What the browser does at the provider: the person signs in, and the provider
        answers the console's authorization request with a code. ``(code, state)``."""
        sent = urlsplit(location)
        assert f"{sent.scheme}://{sent.netloc}" == ISSUER, location
        query = {name: values[0] for name, values in parse_qs(sent.query).items()}
        assert (query["response_type"], query["client_id"]) == ("code", CLIENT_ID)
        assert query["code_challenge_method"] == "S256"
        code = secrets.token_urlsafe(24)
        self.grants[code] = Grant(query["nonce"], query["code_challenge"], query["redirect_uri"], account)
        return code, query["state"]

    def id_token(self, grant: Grant) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": CLIENT_ID,
            "sub": grant.account,
            "iat": now,
            "exp": now + 300,
            "nonce": grant.nonce,
            **ACCOUNTS[grant.account],
            **self.extra_claims,
        }
        return jwt.encode({"alg": "RS256", "kid": SIGNING_KEY.kid}, claims, SIGNING_KEY)

    def _token(self, request: httpx.Request) -> httpx.Response:
        form = {name: values[0] for name, values in parse_qs(request.content.decode()).items()}
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        grant = self.grants.pop(form.get("code", ""), None)
        if (
            request.headers.get("authorization") != expected
            or grant is None
            or form.get("redirect_uri") != grant.redirect_uri
            or _s256(form.get("code_verifier", "")) != grant.challenge
        ):
            return httpx.Response(400, json={"error": "invalid_grant"})
        return httpx.Response(200, json={"id_token": self.id_token(grant), "token_type": "Bearer"})

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/.well-known/openid-configuration":
            return httpx.Response(
                200,
                json={
                    "issuer": ISSUER,
                    "authorization_endpoint": f"{ISSUER}/authorize",
                    "token_endpoint": f"{ISSUER}/token",
                    "jwks_uri": f"{ISSUER}/jwks",
                    "end_session_endpoint": f"{ISSUER}/session/end",
                    "authorization_response_iss_parameter_supported": True,
                },
            )
        if path == "/jwks":
            return httpx.Response(200, json=KeySet([SIGNING_KEY]).as_dict(private=False))
        if path == "/token" and request.method == "POST":
            return self._token(request)
        return httpx.Response(404)


class Log(logging.Handler):
    """Every record the server writes while the test runs, kept for the checks."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        # Not the server's: the test's own browser noting the addresses it asked for.
        if not (record.name == "httpx" and SITE in record.getMessage()):
            self.records.append(record)

    def text(self) -> str:
        """Each record's message and the facts passed with it, as a log line would hold them."""
        return "\n".join(f"{r.getMessage()} {json.dumps(r.__dict__, default=str)}" for r in self.records)


class Sso:
    """The app with single sign-on, its provider, its log and the test's session."""

    def __init__(self, app: FastAPI, provider: Provider, log: Log, session: AsyncSession) -> None:
        self.app, self.provider, self.log, self.session = app, provider, log, session

    def __repr__(self) -> str:  # as hypothesis reports a failing example
        return "Sso()"

    def browser(self) -> httpx.AsyncClient:
        """A new browser: no cookies."""
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        return httpx.AsyncClient(transport=transport, base_url=SITE)

    async def start(self, browser: httpx.AsyncClient, next_path: str | None = None) -> tuple[str, str]:
        """Start a sign-in in ``browser`` and have the provider answer it: ``(code, state)``."""
        query = "" if next_path is None else f"?next={next_path}"
        started = await browser.get(f"/console/oidc/start{query}")
        assert started.status_code == 303, started.text[:500]
        return self.provider.authorize(started.headers["location"])

    @asynccontextmanager
    async def signed_in(self, account: str) -> AsyncIterator[httpx.AsyncClient]:
        """A browser signed in through the provider as ``account``."""
        async with self.browser() as browser:
            started = await browser.get("/console/oidc/start")
            code, state = self.provider.authorize(started.headers["location"], account)
            finished = await browser.get(
                "/console/oidc/callback", params={"code": code, "state": state, "iss": ISSUER}
            )
            assert finished.status_code == 200, finished.text[:500]
            yield browser


@pytest.fixture
async def sso(
    app: FastAPI, session: AsyncSession, catalog_loaded: None, tmp_path: Path
) -> AsyncIterator[Sso]:
    """Single sign-on configured, the test policies in force and one citizen."""
    role_map = tmp_path / "console-roles.yaml"
    role_map.write_text(ROLE_MAP)
    console = ConsoleSettings(
        oidc_issuer=ISSUER,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret=SecretStr(CLIENT_SECRET),
        oidc_role_map=role_map,
    )
    provider = Provider()
    app.state.console_settings = console
    # As ``router.oidc_sign_in`` makes it on first use, with the provider's transport.
    app.state.console_oidc = OidcSignIn(
        console, SITE, http=httpx.AsyncClient(transport=httpx.MockTransport(provider))
    )
    await fuzz_ground(app, session)
    await session.commit()
    log = Log()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(log)
    root.setLevel(logging.INFO)
    try:
        yield Sso(app, provider, log, session)
    finally:
        root.removeHandler(log)
        root.setLevel(previous)


# --- what every answer must be ------------------------------------------------------------


def lands_at(base: str, target: str) -> tuple[str, str]:
    """Where a browser goes for ``target`` on the page at ``base``, as ``(origin, path)``:
    the WHATWG URL parser drops tabs and line breaks, trims C0 controls and spaces, reads
    ``\\`` as ``/``, and takes ``%2e`` for a dot in a dot segment."""
    cleaned = re.sub(r"[\t\n\r]", "", target).strip(
        "\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0c\x0e"
        "\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19"
        "\x1a\x1b\x1c\x1d\x1e\x1f "
    )
    cleaned = re.sub("%2e", ".", cleaned.replace("\\", "/"), flags=re.IGNORECASE)
    parts = urlsplit(urljoin(base, cleaned))
    return f"{parts.scheme}://{parts.netloc}", parts.path


def lands_on(base: str, target: str) -> str:
    """The origin a browser goes to for ``target`` on the page at ``base``."""
    return lands_at(base, target)[0]


def in_console(path: str) -> bool:
    return path == "/console" or path.startswith("/console/")


ONWARD = re.compile(r'(?:href|action)="([^"]*)"|content="0;url=([^"]*)"')


def onward_targets(response: httpx.Response) -> list[str]:
    """Where the answer sends the browser: its Location, and the page's links, form actions
    and refresh."""
    found = [response.headers["location"]] if "location" in response.headers else []
    if response.headers.get("content-type", "").startswith("text/html"):
        found += [unescape(a or b) for a, b in ONWARD.findall(response.text)]
    return found


def judge(response: httpx.Response, sent: list[str], *, provider_links: bool = False) -> list[str]:
    """What is wrong with one answer to input that carried ``sent``, if anything."""
    problems: list[str] = []
    status = response.status_code
    content_type = response.headers.get("content-type", "")
    if not (200 <= status < 500):
        problems.append(f"answered {status}")
    if status >= 400 and not content_type.startswith("text/html"):
        problems.append(f"{status} as {content_type}")
    if content_type.startswith("text/html"):
        if "Traceback" in response.text:
            problems.append("a traceback in the page")
        for value in sent:
            if MARKUP in value and MARKUP in response.text:
                problems.append("sent markup shown unescaped")
    request_url = str(response.request.url)
    for target in onward_targets(response):
        origin = lands_on(request_url, target)
        if origin != SITE and not (provider_links and origin == ISSUER):
            problems.append(f"sends the browser to {origin} ({target[:80]!r})")
    return problems


def log_problems(log: Log, sent_secrets: list[str]) -> list[str]:
    """What is wrong with what the server logged since the last call: an error, or a
    code, ``state`` or token that was sent."""
    problems = [
        f"logged {r.levelname} {r.name}: {r.getMessage()[:200]}"
        for r in log.records
        if r.levelno >= logging.ERROR or r.exc_info
    ]
    text = log.text()
    log.records.clear()
    problems += [f"logged a sent secret ({value[:12]}...)" for value in sent_secrets if value in text]
    return problems


# --- hostile values -----------------------------------------------------------------------

# Values as they go on the wire: already %-escaped, so bytes that are not UTF-8 get through.
HOSTILE = st.one_of(
    st.sampled_from(
        [
            "",
            "+",
            "{long}",
            "%00",
            "a%00b",
            "%ED%A0%80",  # a lone surrogate
            "%FF%FE%C0%AF",  # not UTF-8
            "%F4%90%80%80",  # beyond Unicode
            "%01%1B%7F%0D%0A",
            "%",
            "%zz",
            "9" * 40,
            "-1",
            "[]",
            "%7B%22a%22%3A1%7D",  # {"a":1}
            quote(f"\"'>{MARKUP}", safe=""),
            quote(f"<script>alert(1)</script>{MARKUP}", safe=""),
            quote("javascript:alert(1)", safe=""),
        ]
    ),
    st.binary(max_size=24).map(lambda raw: quote_from_bytes(raw, safe="")),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=24).map(
        lambda text: quote(text + MARKUP, safe="")
    ),
)


# Stood in for by a short name, so that hypothesis reports a failing example readably; as
# many can go in one address as a browser sends (httpx sends none over 64k).
LONG = "a" * 8000


def encode(pairs: list[tuple[str, str]]) -> str:
    """A query from pairs whose values are already %-escaped."""
    return "&".join(f"{quote(name, safe='')}={value.replace('{long}', LONG)}" for name, value in pairs)


# --- the callback ---------------------------------------------------------------------------

CALLBACK_NAMES = ("code", "state", "iss", "error", "error_description", "session_state")
# Stand-ins for the values of this browser's sign-in, and of another browser's.
OWN = ("{code}", "{state}", "{iss}", "{other-code}", "{other-state}")
CALLBACK_PARAMETER = st.tuples(st.sampled_from(CALLBACK_NAMES), st.one_of(st.sampled_from(OWN), HOSTILE))
GOOD_CALLBACK = (("code", "{code}"), ("state", "{state}"), ("iss", "{iss}"))


def is_good_callback(pairs: list[tuple[str, str]]) -> bool:
    """The provider's answer to this browser's request, once and unchanged (RFC 6749 4.1.2:
    no parameter more than once; RFC 9207: ``iss`` names the provider)."""
    named = {name: [value for n, value in pairs if n == name] for name in CALLBACK_NAMES}
    return (
        named["code"] == ["{code}"]
        and named["state"] == ["{state}"]
        and named["iss"] == ["{iss}"]
        and not named["error"]
    )


class TestTheCallback:
    @EXAMPLES
    @given(
        kept=st.lists(st.sampled_from(GOOD_CALLBACK), unique=True),
        added=st.lists(CALLBACK_PARAMETER, max_size=4),
    )
    async def test_only_the_answer_to_this_browsers_request_signs_in(
        self, sso: Sso, kept: list[tuple[str, str]], added: list[tuple[str, str]]
    ) -> None:
        pairs = [*kept, *added]
        async with sso.browser() as other, sso.browser() as browser:
            other_code, other_state = await sso.start(other)
            code, state = await sso.start(browser)
            flow_cookie = browser.cookies["tellonce_console_oidc"]
            own = {
                "{code}": quote(code, safe=""),
                "{state}": quote(state, safe=""),
                "{iss}": quote(ISSUER, safe=""),
                "{other-code}": quote(other_code, safe=""),
                "{other-state}": quote(other_state, safe=""),
            }
            sent = [(name, own.get(value, value)) for name, value in pairs]
            answer = await browser.get(f"/console/oidc/callback?{encode(sent)}")
            problems = judge(answer, [value for _, value in sent])
            problems += log_problems(sso.log, [code, state, other_code, other_state, flow_cookie])
            assert problems == [], (sent, problems)
            if is_good_callback(pairs):
                assert answer.status_code == 200, answer.text[:2000]
                assert "Signed in as Ada Lovelace" in answer.text
                assert (await browser.get("/console")).status_code == 200
            else:
                assert answer.status_code in (400, 403), (sent, answer.status_code, answer.text[:2000])
                assert "tellonce_console=" not in answer.headers.get("set-cookie", "")
                assert (await browser.get("/console")).status_code == 303

    @EXAMPLES
    @given(error=HOSTILE, description=HOSTILE)
    async def test_the_providers_error_is_a_page_that_does_not_show_its_description(
        self, sso: Sso, error: str, description: str
    ) -> None:
        async with sso.browser() as browser:
            _code, state = await sso.start(browser)
            query = encode(
                [
                    ("error", error or "access_denied"),
                    ("error_description", description),
                    ("state", quote(state)),
                ]
            )
            answer = await browser.get(f"/console/oidc/callback?{query}")
        assert judge(answer, [error, description]) == []
        assert answer.status_code == 403
        assert "You could not be signed in" in answer.text
        assert log_problems(sso.log, [state]) == []

    async def test_a_parameter_named_twice_is_refused(self, sso: Sso) -> None:
        """Starlette keeps the last of a repeated parameter: a second ``code`` or ``error``
        appended to the provider's answer chose which one the console acted on."""
        async with sso.browser() as browser:
            code, state = await sso.start(browser)
            for pairs in (
                [("code", "stale"), ("code", code), ("state", state), ("iss", ISSUER)],
                [("code", code), ("state", "forged.L2NvbnNvbGU"), ("state", state), ("iss", ISSUER)],
                [
                    ("error", "access_denied"),
                    ("error", ""),
                    ("code", code),
                    ("state", state),
                    ("iss", ISSUER),
                ],
                [("code", code), ("state", state), ("iss", "https://evil.example"), ("iss", ISSUER)],
            ):
                answer = await browser.get(
                    f"/console/oidc/callback?{encode([(n, quote(v, safe='')) for n, v in pairs])}"
                )
                assert answer.status_code == 403, pairs
                assert "You could not be signed in" in answer.text
        assert log_problems(sso.log, [code, state]) == []

    async def test_an_answer_that_does_not_name_the_provider_is_refused(self, sso: Sso) -> None:
        """RFC 9207: the provider says it names itself in its answers
        (``authorization_response_iss_parameter_supported``, as oidc-provider does), so an
        answer naming another issuer, or none, did not come from it."""
        for iss in (None, "https://evil.example", f"{ISSUER}/", ""):
            async with sso.browser() as browser:
                code, state = await sso.start(browser)
                params = {"code": code, "state": state} | ({} if iss is None else {"iss": iss})
                answer = await browser.get("/console/oidc/callback", params=params)
                assert answer.status_code == 403, iss
                assert "could not be verified" in answer.text
                assert (await browser.get("/console")).status_code == 303

    async def test_an_empty_error_is_still_an_error(self, sso: Sso) -> None:
        async with sso.browser() as browser:
            code, state = await sso.start(browser)
            answer = await browser.get(
                "/console/oidc/callback", params={"error": "", "code": code, "state": state, "iss": ISSUER}
            )
            assert answer.status_code == 403
            assert "cancelled or refused" in answer.text


# --- where a sign-in returns to -------------------------------------------------------------

# Ways to name another site, or script, as the place to return to.
OFF_SITE = (
    "//evil.example",
    "/\\evil.example",
    "\\\\evil.example",
    "https://evil.example",
    "javascript:alert(1)",
    "\t//evil.example",
    "/\t/evil.example",
    "@evil.example",
    ".evil.example",
    "%2F%2Fevil.example",
    "%5C%5Cevil.example",
    "/%2e%2e//evil.example",
    "/../..//evil.example",
    "\r\nLocation: https://evil.example",
    f"\"'>{MARKUP}",
    "data:text/html,<script>alert(1)</script>",
)
NEXT = st.builds(
    lambda prefix, target, times: _quoted(prefix + target, times),
    st.sampled_from(["", "/console", "/console/", "/console/..", "/", " ", "\x00"]),
    st.one_of(st.sampled_from(OFF_SITE), st.text(max_size=12)),
    st.integers(min_value=0, max_value=2),
)


def _quoted(text: str, times: int) -> str:
    """``text`` %-escaped ``times`` over, as a ``next`` goes on the wire (once at least)."""
    for _ in range(times + 1):
        text = quote(text, safe="", errors="surrogatepass")
    return text


class TestWhereASignInReturns:
    @EXAMPLES
    @given(next_path=NEXT)
    async def test_a_sign_in_returns_only_to_a_console_page(self, sso: Sso, next_path: str) -> None:
        async with sso.browser() as browser:
            page = await browser.get(f"/console/sign-in?next={next_path}")
            assert page.status_code == 200
            assert judge(page, [next_path]) == []
            code, state = await sso.start(browser, next_path)
            finished = await browser.get(
                "/console/oidc/callback", params={"code": code, "state": state, "iss": ISSUER}
            )
            assert finished.status_code == 200, finished.text[:2000]
            assert judge(finished, [next_path]) == []
            [refresh] = re.findall(r'content="0;url=([^"]*)"', finished.text)
            origin, path = lands_at(SITE + "/console/oidc/callback", unescape(refresh))
            assert origin == SITE
            assert in_console(path), refresh
            assert log_problems(sso.log, [code, state]) == []

    async def test_a_long_console_path_to_return_to_still_signs_in(self, sso: Sso) -> None:
        """A path too long to ride in ``state`` made a sign-in that could never finish
        ("not started in this browser"): it returns to the home page instead."""
        for path in ("/console/" + "a" * 3000, "/console/" + "%C3%A9" * 600):
            async with sso.browser() as browser:
                code, state = await sso.start(browser, path)
                finished = await browser.get(
                    "/console/oidc/callback", params={"code": code, "state": state, "iss": ISSUER}
                )
                assert finished.status_code == 200, finished.text[:2000]
                assert 'content="0;url=/console"' in finished.text


# Paths that start "/console" but that a browser resolves to outside it, or that are not
# the normalised path of a console page: a sign-in returns to the console's home instead.
LEAVES_THE_CONSOLE = (
    "/console/../v1/citizens",
    "/console/..",
    "/console/.",
    "/console/./audit",
    "/console/audit/../../v1/audit",
    "/console/..//evil.example",
    "/console/%2e%2e/v1/citizens",
    "/console/%2E%2e/v1/citizens",
    "/console/.%2e/v1/citizens",
    "/console/%2e/../v1/citizens",
    "/console/%252e%252e/v1/citizens",
    "/console%2F..%2Fv1/citizens",
    "/console/..%2Fv1/citizens",
    "/console/..%5Cv1/citizens",
    "/console\\..\\v1/citizens",
    "/console/.\t./v1/citizens",
    "/console/.%09./v1/citizens",
    "/console//evil.example",
    "/consoles",
    "/console-admin/",
    "/console%2Dadmin",
)
# Normalised console paths, kept as they are.
STAYS_IN_THE_CONSOLE = (
    "/console",
    "/console/",
    "/console/audit",
    "/console/agreements/address-for-welfare/edit",
    "/console/agreements/Not%20An%20Id",
    "/console/agreements/a.b",
    "/console/...",
    "/console/audit?consumer=welfare&since=2026-01-01",
    "/console/audit?next=/../v1",
)
# Pieces a hostile path is made of.
PATH_PIECES = st.sampled_from(
    [
        "/",
        ".",
        "..",
        "%2e",
        "%2E",
        "%25",
        "2e",
        "%2f",
        "%5c",
        "\\",
        "\t",
        "%09",
        "//",
        "console",
        "v1",
        "?",
        "#",
        " ",
        "@",
    ]
)


class TestTheNextPath:
    """``_safe_next`` keeps only a normalised path inside the console (dot segments, escaped
    or not, backslashes and control characters are refused), and any other path is the
    console's home."""

    @pytest.mark.parametrize("target", LEAVES_THE_CONSOLE)
    def test_a_path_that_leaves_the_console_is_the_home_page(self, target: str) -> None:
        assert _safe_next(target) == CONSOLE_HOME

    @pytest.mark.parametrize("target", STAYS_IN_THE_CONSOLE)
    def test_a_normalised_console_path_is_kept(self, target: str) -> None:
        assert _safe_next(target) == target

    @settings(max_examples=400, deadline=None, derandomize=True)
    @given(
        prefix=st.sampled_from(["/console", "/console/", "/console/audit/", ""]),
        pieces=st.lists(PATH_PIECES, max_size=8),
    )
    def test_what_is_kept_lands_in_the_console(self, prefix: str, pieces: list[str]) -> None:
        target = prefix + "".join(pieces)
        kept = _safe_next(target)
        assert kept in (target, CONSOLE_HOME)
        for page in ("/console/sign-in", "/console/oidc/callback", "/console/audit/integrity"):
            origin, path = lands_at(SITE + page, kept)
            assert origin == SITE
            assert in_console(path), (target, page)

    @pytest.mark.parametrize("target", LEAVES_THE_CONSOLE)
    async def test_a_single_sign_on_does_not_return_outside_the_console(self, sso: Sso, target: str) -> None:
        async with sso.browser() as browser:
            code, state = await sso.start(browser, quote(target, safe=""))
            finished = await browser.get(
                "/console/oidc/callback", params={"code": code, "state": state, "iss": ISSUER}
            )
            assert finished.status_code == 200, finished.text[:2000]
            assert 'content="0;url=/console"' in finished.text


# --- the session cookie and CSRF tokens -------------------------------------------------------


def _altered(token: str, at: int) -> str:
    position = at % len(token)
    return token[:position] + ("A" if token[position] != "A" else "B") + token[position + 1 :]


COOKIE = st.one_of(
    st.tuples(st.just("garbled"), st.binary(max_size=60)),
    st.tuples(st.just("truncated"), st.integers(min_value=0, max_value=42)),
    st.tuples(st.just("altered"), st.integers(min_value=0, max_value=42)),
    st.tuples(
        st.sampled_from(["another-server", "expired", "idle", "signed-out", "long", "markup"]), st.none()
    ),
)


class TestTheSessionCookie:
    @EXAMPLES
    @given(cookie=COOKIE)
    async def test_a_session_cookie_that_is_not_a_live_session_is_sent_to_sign_in(
        self, sso: Sso, cookie: tuple[str, Any]
    ) -> None:
        kind, detail = cookie
        async with sso.signed_in("grace") as person:
            token = person.cookies["tellonce_console"]
            value: bytes
            if kind == "garbled":
                value = detail
            elif kind == "truncated":
                value = token[:detail].encode()
            elif kind == "altered":
                value = _altered(token, detail).encode()
            elif kind == "another-server":
                value = secrets.token_urlsafe(32).encode()
            elif kind == "long":
                value = b"a" * 8000
            elif kind == "markup":
                value = quote(MARKUP).encode() + b";" + MARKUP.encode()
            else:
                value = token.encode()
                if kind == "signed-out":
                    signed_in = await person.get("/console")
                    out = await person.post("/console/sign-out", data={"csrf_token": csrf_of(signed_in)})
                    assert out.status_code in (200, 303)
                else:
                    long_ago = utcnow() - timedelta(hours=9 if kind == "expired" else 0, minutes=16)
                    aged = {"created_at": long_ago} if kind == "expired" else {"last_seen_at": long_ago}
                    await sso.session.execute(
                        update(ConsoleSession)
                        .where(ConsoleSession.token_hash == token_hash(token))
                        .values(**aged)
                    )
                    await sso.session.commit()
        async with sso.browser() as stranger:
            headers = {b"cookie": b"tellonce_console=" + value}
            shown = await stranger.get("/console/citizen", headers=headers)
            assert judge(shown, []) == []
            assert shown.status_code == 303
            assert shown.headers["location"] == "/console/sign-in?next=/console/citizen"
            # A CSRF token made for the cookie is no help: the cookie is no session.
            text = value.decode(errors="replace")
            posted = await stranger.post(
                "/console/citizen",
                headers=headers,
                data={"csrf_token": hashlib.sha256(text.encode()).hexdigest(), "citizen_id": CITIZEN},
            )
            assert judge(posted, []) == []
            assert (posted.status_code, posted.headers.get("location")) == (303, "/console/sign-in")
        assert log_problems(sso.log, [token]) == []


CSRF = st.one_of(
    st.sampled_from(["{pre}", "{other}", "{truncated}", "{upper}", "{longer}", "", "{long}", "0" * 64]),
    HOSTILE,
)


class TestCsrfTokens:
    @EXAMPLES
    @given(
        form=st.sampled_from(["/console/citizen", "/console/citizen/choices", "/console/sign-out"]),
        csrf=CSRF,
    )
    async def test_a_form_without_its_sessions_token_is_refused(self, sso: Sso, form: str, csrf: str) -> None:
        async with (
            sso.signed_in("grace") as person,
            sso.signed_in("grace") as other,
            sso.browser() as anonymous,
        ):
            own = csrf_of(await person.get("/console"))
            stand_ins = {
                "{pre}": csrf_of(await anonymous.get("/console/sign-in")),
                "{other}": csrf_of(await other.get("/console")),
                "{truncated}": own[:-1],
                "{upper}": own.upper(),
                "{longer}": own + "0",
            }
            sent = stand_ins.get(csrf, csrf)
            body = encode(
                [
                    ("csrf_token", sent),
                    ("citizen_id", CITIZEN),
                    ("change", "object"),
                    ("agreement", AGREEMENT),
                ]
            )
            answer = await person.post(
                form, content=body, headers={"content-type": "application/x-www-form-urlencoded"}
            )
            assert judge(answer, [sent]) == []
            assert answer.status_code == 403
            assert "This form could not be accepted" in answer.text
            # Still signed in: a refused sign-out ends nothing.
            assert (await person.get("/console")).status_code == 200
            assert log_problems(sso.log, [own, person.cookies["tellonce_console"]]) == []


# --- the citizen pages, for a person signed in through the provider ------------------------------

CITIZEN_FORMS = {
    "/console/citizen": {"citizen_id": CITIZEN, "after": "0", "shown": "0"},
    "/console/citizen/choices": {
        "citizen_id": CITIZEN,
        "agreement": AGREEMENT,
        "consent_id": "",
        "change": "object",
    },
}
FIELD_VALUE = st.one_of(
    HOSTILE,
    st.sampled_from(["{good}", "{missing}", "{twice}", CITIZEN.upper(), "give", "paused", "withdraw"]),
)


class TestCitizenPages:
    @EXAMPLES
    @given(
        form=st.sampled_from(sorted(CITIZEN_FORMS)),
        changed=st.dictionaries(
            st.sampled_from(["citizen_id", "after", "shown", "agreement", "consent_id", "change"]),
            FIELD_VALUE,
            max_size=3,
        ),
    )
    async def test_a_citizen_form_takes_any_field_without_failing(
        self, sso: Sso, form: str, changed: dict[str, str]
    ) -> None:
        async with sso.signed_in("grace") as person:
            token = csrf_of(await person.get("/console/citizen"))
            pairs: list[tuple[str, str]] = [("csrf_token", token)]
            for name, good in CITIZEN_FORMS[form].items():
                value = changed.get(name, "{good}")
                if value == "{twice}":
                    pairs += [(name, quote(good, safe="")), (name, quote(MARKUP))]
                elif value != "{missing}":
                    pairs.append((name, quote(good, safe="") if value == "{good}" else value))
            body = encode(pairs)
            answer = await person.post(
                form, content=body, headers={"content-type": "application/x-www-form-urlencoded"}
            )
            assert judge(answer, [body]) == [], body[:300]
            assert answer.status_code in (200, 303, 400, 404, 409), (answer.status_code, body[:300])
            # The choices page, asked for the citizen the form named.
            named = changed.get("citizen_id", "{good}")
            query = encode([("citizen_id", CITIZEN if named.startswith("{") else named)])
            shown = await person.get(f"/console/citizen/choices?{query}")
            assert judge(shown, []) == []
            assert log_problems(sso.log, [token, person.cookies["tellonce_console"]]) == []

    async def test_a_person_signed_in_through_the_provider_uses_the_citizen_pages(self, sso: Sso) -> None:
        """The pages' services take the provider's person (``oidc:grace``), who has no client
        row, as they take a client signed in with its secret."""
        async with sso.signed_in("grace") as person:
            choices = await person.get("/console/citizen/choices", params={"citizen_id": CITIZEN})
            assert choices.status_code == 200, choices.text[:3000]
            assert "required by law" in choices.text
            token = csrf_of(choices)
            data = {"csrf_token": token, "citizen_id": CITIZEN, "agreement": AGREEMENT, "change": "object"}
            refused = await person.post("/console/citizen/choices", data=data)
            # The test policies' agreements apply by law: none may be objected to.
            assert refused.status_code == 409, refused.text[:3000]
            assert "cannot be objected to" in refused.text
            log = await person.post("/console/citizen", data={"csrf_token": token, "citizen_id": CITIZEN})
            assert log.status_code == 200, log.text[:3000]


class TestSignOut:
    async def test_signing_out_ends_the_session_and_offers_the_providers_sign_out(self, sso: Sso) -> None:
        async with sso.signed_in("ada") as person:
            token = csrf_of(await person.get("/console"))
            out = await person.post("/console/sign-out", data={"csrf_token": token})
            assert out.status_code == 200
            assert judge(out, [], provider_links=True) == []
            [refresh] = re.findall(r'content="0;url=([^"]*)"', out.text)
            assert unescape(refresh).startswith(f"{ISSUER}/session/end?")
            assert (await person.get("/console")).status_code == 303
            again = await person.post("/console/sign-out", data={"csrf_token": token})
            assert judge(again, []) == []
            assert again.status_code == 303


# --- what the provider says of the person -----------------------------------------------------------

CLAIM = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=30).map(lambda text: text + MARKUP),
    st.sampled_from(["", "a" * 5000, "a\x00b", "\u202e", f"\"'>{MARKUP}", "oidc:" + "x" * 70]),
    st.integers(),
    st.lists(st.text(max_size=5), max_size=3),
    st.none(),
)


class TestWhatTheProviderSays:
    @EXAMPLES
    @given(claim=st.sampled_from(["sub", "name", "email", "groups"]), value=CLAIM)
    async def test_any_claim_value_is_a_sign_in_or_a_refusal_page(
        self, sso: Sso, claim: str, value: Any
    ) -> None:
        """The ID token is signed by the provider, but what it says of a person is what the
        person or an administrator typed: a name with markup, a subject with a NUL."""
        sso.provider.extra_claims = {claim: value}
        try:
            async with sso.browser() as browser:
                code, state = await sso.start(browser)
                answer = await browser.get(
                    "/console/oidc/callback", params={"code": code, "state": state, "iss": ISSUER}
                )
                assert judge(answer, []) == []
                assert answer.status_code in (200, 403), answer.text[:2000]
                if answer.status_code == 200:
                    home = await browser.get("/console")
                    assert judge(home, []) == []
                    assert home.status_code == 200
        finally:
            sso.provider.extra_claims = {}
        assert log_problems(sso.log, [code, state]) == []

    async def _callback(self, sso: Sso, claims: dict[str, Any]) -> tuple[httpx.Response, httpx.Response]:
        """The callback's answer for an ID token with ``claims``, and the home page after it."""
        sso.provider.extra_claims = claims
        try:
            async with sso.browser() as browser:
                code, state = await sso.start(browser)
                params = {"code": code, "state": state, "iss": ISSUER}
                answer = await browser.get("/console/oidc/callback", params=params)
                return answer, await browser.get("/console")
        finally:
            sso.provider.extra_claims = {}

    async def test_a_subject_no_audit_line_can_name_is_refused(self, sso: Sso) -> None:
        """A subject with a NUL signed in on SQLite and was a 400 ("a character the store
        cannot keep") on PostgreSQL; OIDC Core gives it at most 255 characters."""
        for subject in ("a\x00b", "a\x1bb", "a\u202eb", "x" * 256):
            answer, home = await self._callback(sso, {"sub": subject})
            assert judge(answer, []) == []
            assert answer.status_code == 403, subject
            assert "could not be verified" in answer.text
            assert home.status_code == 303

    async def test_a_group_claim_that_is_no_list_of_names_grants_nothing(self, sso: Sso) -> None:
        """A number was a 500 (iterated), and an object's keys were taken for group names."""
        for groups in (1, {"register-owners": True}, [["register-owners"]], None):
            answer, home = await self._callback(sso, {"groups": groups})
            assert judge(answer, []) == []
            assert answer.status_code == 403, groups
            assert "not given a role in the console" in answer.text
            assert home.status_code == 303

    async def test_the_name_shown_is_the_providers_without_control_characters(self, sso: Sso) -> None:
        answer, home = await self._callback(sso, {"name": f"Ada\x00\x07 Lovelace {MARKUP}" + "x" * 300})
        assert judge(answer, []) == []
        [heading] = re.findall(r"<h1[^>]*>([^<]*)</h1>", answer.text)
        assert heading == f"Signed in as Ada Lovelace &lt;x-fuzz&gt;{'x' * 179}"
        assert home.status_code == 200
