"""Single sign-on against a hostile or broken OpenID provider: a real HTTP server on
127.0.0.1 written here (discovery document, signing keys, token endpoint) that answers
whatever a test tells it to, and the console's relying party with its own HTTP client, as
``router.oidc_sign_in`` makes it.

``test_oidc_bad_input.py`` sends hostile input from the browser's side; here it is the
provider that sends it. The promise for every answer: the sign-in is refused with a
console page (a 403 from the callback, a 503 from ``/console/oidc/start``), never a 500
nor a traceback, nothing of the token shown, no error in the log; and every fetch is
bounded in time and size as a whole, so a provider that never answers, drips its answer
or streams without end cannot hold a worker or fill its memory.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import json
import logging
import secrets
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession

from service.console.config import ConsoleSettings
from service.console.oidc import OidcSignIn

SITE = "http://testserver"
CLIENT_ID = "tellonce-console"
CLIENT_SECRET = "console-secret-for-tests-only"
SIGNING_KEY = RSAKey.generate_key(2048, parameters={"kid": "provider-key-1"})
OTHER_KEY = RSAKey.generate_key(2048, parameters={"kid": "provider-key-1"})
ROLE_MAP = "claim: groups\nrules:\n  - {group: register-owners, department: register, role: data-owner}\n"
# Carried by every hostile answer, so a page or log line that shows any of it is found.
MARKER = "hostile-provider-marker"
# The limits the tests give the relying party, small to keep the tests fast. The time
# bound is that small only in the tests of it (``TestTransport``): elsewhere an honest
# provider's answer must not miss it on a loaded machine, where a sign-in would then be
# refused for the wrong reason (503, "cannot be reached").
FETCH_SECONDS = 1.0
ANSWER_BYTES = 64 * 1024
# What the test waits for an answer before calling the console hung: a guard against a
# hang only, far past what a loaded machine takes. That a fetch is bounded is checked by
# what the provider saw (``ran_their_course``), not by the clock.
PATIENCE_SECONDS = 120.0

Answer = Callable[[BaseHTTPRequestHandler], None]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _QuietServer(ThreadingHTTPServer):
    """A server whose handlers may find the console gone: it hangs up on an answer over its
    limits, as the tests want, and that is not an error to print."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeProvider:
    """An OpenID provider on a loopback port. By default it keeps to the protocol: codes
    are single use, the ID token is RS256 with the published key, names the issuer, the
    console as audience and the nonce of the sign-in the console started last. A test
    changes the discovery document, the ID token's header, claims or key, the token
    response, or replaces any answer by path (``answers``)."""

    def __init__(self) -> None:
        self.server = _QuietServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.provider = self  # type: ignore[attr-defined]
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.discovery: dict[str, Any] = {}
        self.header: dict[str, Any] = {}
        self.claims: dict[str, Any] = {}
        self.dropped: set[str] = set()
        self.token_response: dict[str, Any] = {}
        self.key = SIGNING_KEY
        self.id_token_override: str | None = None
        self.answers: dict[str, Answer] = {}
        self.nonce = ""
        self.used_codes: set[str] = set()
        self.issued: list[str] = []
        self.stopping = threading.Event()
        # Hostile answers that ran their whole course: a fetch the console bounds never
        # lets one do so, since the console hangs up first.
        self.ran_their_course = 0
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeProvider:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def discovery_document(self) -> dict[str, Any]:
        found = {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            **self.discovery,
        }
        return {name: value for name, value in found.items() if value is not None}

    def id_token(self) -> str:
        if self.id_token_override is not None:
            return self.id_token_override
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "sub": "ada",
            "iat": now,
            "exp": now + 300,
            "nonce": self.nonce,
            "groups": ["register-owners"],
            "name": "Ada Lovelace",
            **self.claims,
        }
        claims = {name: value for name, value in claims.items() if name not in self.dropped}
        header = {"alg": "RS256", "kid": self.key.kid, **self.header}
        return jwt.encode(header, claims, self.key)

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        code = form.get("code", "")
        if code in self.used_codes:
            return 400, {"error": "invalid_grant", "error_description": MARKER}
        self.used_codes.add(code)
        id_token = self.id_token()
        self.issued.append(id_token)
        response = {"id_token": id_token, "access_token": "at-" + MARKER, "token_type": "Bearer"}
        response.update(self.token_response)
        return 200, {name: value for name, value in response.items() if value is not None}


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer
    form: dict[str, str]

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test's output is the console's."""

    @property
    def provider(self) -> FakeProvider:
        return self.server.provider  # type: ignore[attr-defined,no-any-return]

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        path = urlsplit(self.path).path
        # Read whatever was sent: a socket closed with it unread is reset, not closed.
        length = int(self.headers.get("content-length") or 0)
        self.form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        if path in self.provider.answers:
            self.provider.answers[path](self)
        elif path == "/.well-known/openid-configuration":
            send(self, 200, json.dumps(self.provider.discovery_document()).encode())
        elif path == "/jwks":
            send(self, 200, json.dumps(KeySet([SIGNING_KEY]).as_dict(private=False)).encode())
        elif path == "/token" and self.command == "POST":
            status, body = self.provider.token(self.form)
            send(self, status, json.dumps(body).encode())
        else:
            send(self, 404, b"{}")


# --- answers a test puts in place of the provider's own -------------------------------------


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes, **headers: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", headers.pop("content_type", "application/json"))
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def raw(status: int, body: bytes, **headers: str) -> Answer:
    return lambda handler: send(handler, status, body, **headers)


def never_answers(handler: BaseHTTPRequestHandler) -> None:
    """Takes the request and says nothing until the test is over, or for 30 s."""
    provider: FakeProvider = handler.server.provider  # type: ignore[attr-defined]
    if not provider.stopping.wait(30):
        provider.ran_their_course += 1


def drips(handler: BaseHTTPRequestHandler) -> None:
    """A JSON answer one byte at a time, each well within any read timeout."""
    body = json.dumps({"padding": MARKER * 1000}).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    provider: FakeProvider = handler.server.provider  # type: ignore[attr-defined]
    try:
        for byte in body:
            if provider.stopping.wait(0.1):
                return
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
    except OSError:  # the console hung up: as it should
        return
    provider.ran_their_course += 1


def endless(handler: BaseHTTPRequestHandler) -> None:
    """A JSON array that never ends (no length: the body runs until the connection
    closes), 64 KiB every 10 ms, so a client that keeps it all grows without bound."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.end_headers()
    stopping = handler.server.provider.stopping  # type: ignore[attr-defined]
    chunk = (json.dumps(MARKER) + ",").encode() * (65536 // (len(MARKER) + 3))
    try:
        handler.wfile.write(b"[")
        while not stopping.wait(0.01):
            handler.wfile.write(chunk)
            handler.wfile.flush()
    except OSError:
        return


def huge_json(handler: BaseHTTPRequestHandler) -> None:
    """A well-formed token response, padded past any sane size (4 MiB)."""
    provider: FakeProvider = handler.server.provider  # type: ignore[attr-defined]
    _, response = provider.token({"code": secrets.token_urlsafe()})
    response["padding"] = MARKER * (4 * 1024 * 1024 // len(MARKER))
    send(handler, 200, json.dumps(response).encode())


def gzip_bomb(handler: BaseHTTPRequestHandler) -> None:
    """A well-formed token response in a few KiB on the wire that decompress to 8 MiB."""
    provider: FakeProvider = handler.server.provider  # type: ignore[attr-defined]
    _, response = provider.token({"code": secrets.token_urlsafe()})
    response["padding"] = "a" * (8 * 1024 * 1024)
    send(handler, 200, gzip.compress(json.dumps(response).encode(), compresslevel=6), Content_Encoding="gzip")


# --- ID tokens a provider should never issue -------------------------------------------------


def unsigned(provider: FakeProvider) -> None:
    """``alg: none``: no signature at all."""
    header = _b64(json.dumps({"alg": "none", "kid": SIGNING_KEY.kid}).encode())
    claims = json.loads(base64.urlsafe_b64decode(provider.id_token().split(".")[1] + "=="))
    provider.id_token_override = f"{header}.{_b64(json.dumps(claims).encode())}."


def hmac_with_the_public_key(secret: bytes) -> Callable[[FakeProvider], None]:
    """HS256 keyed with the published public key (algorithm confusion)."""

    def signed(provider: FakeProvider) -> None:
        claims_part = provider.id_token().split(".")[1]
        header = _b64(json.dumps({"alg": "HS256", "kid": SIGNING_KEY.kid}).encode())
        mac = hmac.new(secret, f"{header}.{claims_part}".encode(), hashlib.sha256).digest()
        provider.id_token_override = f"{header}.{claims_part}.{_b64(mac)}"

    return signed


def change(**claims: Any) -> Callable[[FakeProvider], None]:
    def changed(provider: FakeProvider) -> None:
        provider.claims.update(claims)

    return changed


def drop(claim: str) -> Callable[[FakeProvider], None]:
    def dropped(provider: FakeProvider) -> None:
        provider.dropped.add(claim)

    return dropped


def signed_by_another_key(kid: str) -> Callable[[FakeProvider], None]:
    def signed(provider: FakeProvider) -> None:
        provider.key = RSAKey.generate_key(2048, parameters={"kid": kid}) if kid else OTHER_KEY

    return signed


NOW = int(time.time())

ID_TOKENS: dict[str, Callable[[FakeProvider], None]] = {
    "alg none": unsigned,
    "HS256 keyed with the public key's PEM": hmac_with_the_public_key(SIGNING_KEY.as_pem(private=False)),
    "HS256 keyed with the public JWK": hmac_with_the_public_key(
        json.dumps(SIGNING_KEY.as_dict(private=False)).encode()
    ),
    "a kid not in the key set": signed_by_another_key("not-published"),
    "the published kid, another key": signed_by_another_key(""),
    "another issuer": change(iss="https://evil.example"),
    "the issuer with a slash added": lambda p: p.claims.update(iss=p.issuer + "/"),
    "another audience": change(aud="another-client"),
    "audiences without azp": change(aud=[CLIENT_ID, "another-client"]),
    "audiences with another azp": change(aud=[CLIENT_ID, "another-client"], azp="another-client"),
    "audience a dict": change(aud={CLIENT_ID: True}),
    "no audience": drop("aud"),
    "expired": change(exp=NOW - 3600, iat=NOW - 7200),
    "issued in the future": change(iat=NOW + 3600, exp=NOW + 7200),
    "not yet valid": change(nbf=NOW + 3600),
    "no exp": drop("exp"),
    "no iat": drop("iat"),
    "exp a string": change(exp="tomorrow"),
    "no nonce": drop("nonce"),
    "another sign-in's nonce": change(nonce="another-sign-ins-nonce"),
    "nonce a number": change(nonce=1),
    "no sub": drop("sub"),
    "sub a number": change(sub=1),
    "sub empty": change(sub=""),
    "a huge claim": change(padding=MARKER * 100_000),
    "many groups, none ours": change(groups=[f"{MARKER}-{i}" for i in range(2000)]),
    "groups a number": change(groups=1),
    "groups a dict": change(groups={"register-owners": True}),
    "a group the role map does not know": change(groups=["register-admins"]),
    "name a dict": change(name={"first": MARKER}, groups=1),
}


# --- the console, the provider and a browser -----------------------------------------------------


class Sso:
    def __init__(self, app: FastAPI, provider: FakeProvider, relying_party: OidcSignIn) -> None:
        self.app, self.provider, self.relying_party = app, provider, relying_party

    def browser(self, site: str = SITE) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        return httpx.AsyncClient(transport=transport, base_url=site)

    async def start(self, browser: httpx.AsyncClient) -> httpx.Response:
        """``/console/oidc/start``; the provider takes the nonce the console sent."""
        started = await browser.get("/console/oidc/start")
        if started.status_code == 303:
            query = parse_qs(urlsplit(started.headers["location"]).query)
            self.provider.nonce = query["nonce"][0]
        return started

    async def callback(
        self, browser: httpx.AsyncClient, started: httpx.Response, code: str
    ) -> httpx.Response:
        state = parse_qs(urlsplit(started.headers["location"]).query)["state"][0]
        return await browser.get("/console/oidc/callback", params={"code": code, "state": state})

    async def sign_in(self) -> httpx.Response:
        """A whole sign-in in a new browser: the start's answer if it refused, else the
        callback's. Bounded: a console that hangs fails the test rather than hanging it."""

        async def attempt() -> httpx.Response:
            async with self.browser() as browser:
                started = await self.start(browser)
                if started.status_code != 303:
                    return started
                return await self.callback(browser, started, secrets.token_urlsafe())

        return await asyncio.wait_for(attempt(), PATIENCE_SECONDS)


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    with FakeProvider() as running:
        yield running


@pytest.fixture
async def sso(
    app: FastAPI,
    session: AsyncSession,
    catalog_loaded: None,
    tmp_path: Path,
    provider: FakeProvider,
) -> AsyncIterator[Sso]:
    role_map = tmp_path / "console-roles.yaml"
    role_map.write_text(ROLE_MAP)
    console = ConsoleSettings(
        oidc_issuer=provider.issuer,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret=SecretStr(CLIENT_SECRET),
        oidc_role_map=role_map,
    )
    app.state.console_settings = console
    # As ``router.oidc_sign_in`` makes it: its own HTTP client, not a test transport.
    relying_party = OidcSignIn(console, SITE)
    relying_party.answer_bytes = ANSWER_BYTES
    app.state.console_oidc = relying_party
    try:
        yield Sso(app, provider, relying_party)
    finally:
        await relying_party.aclose()


def refused(answer: httpx.Response, caplog: pytest.LogCaptureFixture, provider: FakeProvider) -> None:
    """The answer is a console page refusing the sign-in, showing nothing the provider sent."""
    assert answer.status_code in (403, 503), (answer.status_code, answer.text[:500])
    assert answer.headers["content-type"].startswith("text/html")
    assert "Traceback" not in answer.text
    assert MARKER not in answer.text
    assert "tellonce_console_session" not in answer.headers.get("set-cookie", "")
    for token in provider.issued:
        for part in token.split("."):
            if part:
                assert part not in answer.text
                assert part not in caplog.text
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert MARKER not in caplog.text


class TestTheProviderKeepsToTheProtocol:
    async def test_a_sign_in_finishes(self, sso: Sso) -> None:
        """The fake provider is a working one: what the other tests change is all that breaks."""
        answer = await sso.sign_in()
        assert answer.status_code == 200, answer.text[:500]
        assert "Signed in as Ada Lovelace" in answer.text


class TestIdTokens:
    @pytest.mark.parametrize("made", ID_TOKENS.values(), ids=ID_TOKENS.keys())
    async def test_an_id_token_the_console_must_not_accept_is_refused(
        self, sso: Sso, caplog: pytest.LogCaptureFixture, made: Callable[[FakeProvider], None]
    ) -> None:
        made(sso.provider)
        with caplog.at_level(logging.INFO):
            answer = await sso.sign_in()
        refused(answer, caplog, sso.provider)
        assert answer.status_code == 403


class TestTheDiscoveryDocument:
    @pytest.mark.parametrize(
        "changed",
        [
            {"issuer": "https://evil.example"},
            {"issuer": None},
            {"issuer": 1},
            {"jwks_uri": None},
            {"token_endpoint": None},
            {"authorization_endpoint": None},
            {"authorization_endpoint": "javascript:alert(1)//" + MARKER},
            {"authorization_endpoint": "/authorize"},
            {"jwks_uri": "ftp://127.0.0.1/jwks"},
            {"jwks_uri": "http://[::1/" + MARKER},
            {"jwks_uri": 1},
        ],
        ids=repr,
    )
    async def test_a_document_the_console_cannot_use_stops_the_sign_in(
        self, sso: Sso, caplog: pytest.LogCaptureFixture, changed: dict[str, Any]
    ) -> None:
        sso.provider.discovery = changed
        with caplog.at_level(logging.INFO):
            answer = await sso.sign_in()
        refused(answer, caplog, sso.provider)
        assert answer.status_code == 503

    @pytest.mark.parametrize(
        "changed",
        [
            {"token_endpoint": "http://[::1/" + MARKER},
            {"token_endpoint": "mailto:someone@example.org"},
            {"userinfo_endpoint": "http://[::1/" + MARKER},
            {"userinfo_endpoint": ["http://127.0.0.1/userinfo"]},
        ],
        ids=repr,
    )
    async def test_an_endpoint_that_is_no_address_is_refused_not_a_server_error(
        self, sso: Sso, caplog: pytest.LogCaptureFixture, changed: dict[str, Any]
    ) -> None:
        """An endpoint httpx cannot parse raised ``InvalidURL``, which is no ``HTTPError``:
        a 500 at the callback. (The ID token names no groups, so userinfo is asked.)"""
        sso.provider.discovery = changed
        sso.provider.dropped.add("groups")
        with caplog.at_level(logging.INFO):
            answer = await sso.sign_in()
        refused(answer, caplog, sso.provider)

    async def test_keys_behind_a_redirect_are_not_followed(
        self, sso: Sso, caplog: pytest.LogCaptureFixture
    ) -> None:
        sso.provider.answers["/jwks"] = raw(302, b"", Location="http://127.0.0.1:9/jwks")
        with caplog.at_level(logging.INFO):
            answer = await sso.sign_in()
        refused(answer, caplog, sso.provider)
        assert answer.status_code == 503


ANSWERS: dict[str, Answer] = {
    "never answers": never_answers,
    "drips": drips,
    "streams without end": endless,
    "huge JSON": huge_json,
    "a gzip bomb": gzip_bomb,
    "not JSON": raw(200, b"<html>" + MARKER.encode() + b"</html>", content_type="text/html"),
    "a JSON string": raw(200, json.dumps(MARKER).encode()),
    "not UTF-8": raw(200, b"\xff\xfe" + MARKER.encode()),
    "a server error": raw(500, MARKER.encode()),
}


class TestTransport:
    @pytest.mark.parametrize("path", ["/.well-known/openid-configuration", "/jwks", "/token", "/userinfo"])
    @pytest.mark.parametrize("answer", ANSWERS.values(), ids=ANSWERS.keys())
    async def test_each_fetch_is_bounded_in_time_and_size(
        self, sso: Sso, caplog: pytest.LogCaptureFixture, path: str, answer: Answer
    ) -> None:
        sso.relying_party.fetch_seconds = FETCH_SECONDS
        sso.provider.answers[path] = answer
        if path == "/userinfo":
            sso.provider.discovery = {"userinfo_endpoint": f"{sso.provider.issuer}/userinfo"}
            sso.provider.dropped.add("groups")
        with caplog.at_level(logging.INFO):
            # Unbounded, the silent provider would hold the sign-in 30 s, the dripping one
            # for over an hour and the endless one for ever (past PATIENCE_SECONDS).
            answer_page = await sso.sign_in()
        # The console gave up first: no hostile answer ran its course (the silent one's
        # 30 s wait, the whole drip), however loaded the machine.
        assert sso.provider.ran_their_course == 0
        refused(answer_page, caplog, sso.provider)
        if answer in (never_answers, drips):
            assert "cannot be reached" in answer_page.text
        if answer in (endless, huge_json, gzip_bomb):
            assert "could not be read" in answer_page.text


class TestTheTokenEndpoint:
    @pytest.mark.parametrize(
        "response",
        [
            {"id_token": None},
            {"id_token": ""},
            {"id_token": 1},
            {"id_token": {"alg": "none"}},
            {"id_token": MARKER},
            {"token_type": "DPoP"},
            {"token_type": None},
            {"token_type": 1},
        ],
        ids=repr,
    )
    async def test_a_token_response_without_a_usable_bearer_id_token_is_refused(
        self, sso: Sso, caplog: pytest.LogCaptureFixture, response: dict[str, Any]
    ) -> None:
        sso.provider.token_response = response
        with caplog.at_level(logging.INFO):
            answer = await sso.sign_in()
        refused(answer, caplog, sso.provider)
        assert answer.status_code == 403

    async def test_an_error_answer_is_refused_without_its_description(
        self, sso: Sso, caplog: pytest.LogCaptureFixture
    ) -> None:
        sso.provider.answers["/token"] = raw(
            400, json.dumps({"error": "invalid_grant", "error_description": MARKER}).encode()
        )
        with caplog.at_level(logging.INFO):
            answer = await sso.sign_in()
        refused(answer, caplog, sso.provider)
        assert answer.status_code == 403


class TestStateAndCodes:
    async def test_a_callback_with_another_browsers_state_is_refused(
        self, sso: Sso, caplog: pytest.LogCaptureFixture
    ) -> None:
        async with sso.browser() as victim, sso.browser() as attacker:
            started = await sso.start(attacker)
            await sso.start(victim)
            with caplog.at_level(logging.INFO):
                answer = await sso.callback(victim, started, "the-attackers-code")
        refused(answer, caplog, sso.provider)
        assert answer.status_code == 403
        assert "not started in this browser" in answer.text
        # The code was never redeemed.
        assert sso.provider.used_codes == set()

    async def test_over_https_the_cookies_are_host_prefixed_and_a_planted_bare_one_is_ignored(
        self, sso: Sso, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Over https the sign-in's cookie is ``__Host-tellonce_console_oidc`` (Secure, for
        ``/``, no Domain). The attacker's own cookie and state, planted in the victim's
        browser under the bare name (a sibling subdomain or a plain-http answer can), are
        not read: the attacker's sign-in is not finished in the victim's browser."""
        async with sso.browser("https://testserver") as browser:
            started = await sso.start(browser)
            [flow] = started.headers.get_list("set-cookie")
            assert flow.startswith("__Host-tellonce_console_oidc=")
            attributes = {part.strip().lower() for part in flow.split(";")}
            assert {"secure", "path=/", "httponly", "samesite=lax"} <= attributes
            assert not any(a.startswith("domain") for a in attributes)
            answer = await sso.callback(browser, started, "one-code")
            assert answer.status_code == 200, answer.text[:500]
            set_cookies = answer.headers.get_list("set-cookie")
            assert [c.split("=", 1)[0] for c in set_cookies] == [
                "__Host-tellonce_console",
                "__Host-tellonce_console_oidc",
            ]
            assert all("path=/;" in c.lower() and "secure" in c.lower() for c in set_cookies)
        async with sso.browser("https://testserver") as attacker, sso.browser("https://testserver") as victim:
            started = await sso.start(attacker)
            victim.cookies.set(
                "tellonce_console_oidc",
                attacker.cookies["__Host-tellonce_console_oidc"],
                path="/console/oidc",
            )
            with caplog.at_level(logging.INFO):
                answer = await sso.callback(victim, started, "the-attackers-code")
        refused(answer, caplog, sso.provider)
        assert answer.status_code == 403
        assert "not started in this browser" in answer.text
        assert "one-code" in sso.provider.used_codes
        assert "the-attackers-code" not in sso.provider.used_codes

    async def test_signing_in_again_ends_the_browsers_earlier_session(self, sso: Sso) -> None:
        async with sso.browser() as browser:
            first = await sso.callback(browser, await sso.start(browser), "first-code")
            assert first.status_code == 200, first.text[:500]
            earlier = browser.cookies["tellonce_console"]
            second = await sso.callback(browser, await sso.start(browser), "second-code")
            assert second.status_code == 200, second.text[:500]
            assert browser.cookies["tellonce_console"] != earlier
            assert (await browser.get("/console")).status_code == 200
        async with sso.browser() as replayed:
            replayed.cookies.set("tellonce_console", earlier, path="/console")
            assert (await replayed.get("/console")).status_code == 303

    async def test_a_code_used_once_is_refused_the_second_time(
        self, sso: Sso, caplog: pytest.LogCaptureFixture
    ) -> None:
        async with sso.browser() as browser:
            started = await sso.start(browser)
            first = await sso.callback(browser, started, "one-code")
            assert first.status_code == 200
        async with sso.browser() as browser:
            # The same cookie, state and code again (a replayed callback).
            browser.cookies.set(
                "tellonce_console_oidc", started.cookies["tellonce_console_oidc"], path="/console/oidc"
            )
            with caplog.at_level(logging.INFO):
                again = await sso.callback(browser, started, "one-code")
        assert again.status_code == 403
        assert "refused the sign-in" in again.text
        assert MARKER not in again.text
