"""Hostile input to every console page, in process, over the real services on the test's
rolled-back transaction: every refusal is a 4xx HTML page or a redirect, never a 5xx nor
an error in the server's log, and a value the page shows back is HTML-escaped.

The console is not in the OpenAPI document, so Schemathesis (``make fuzz``) never sees it;
this is its fuzzing. Each route is probed with its own fields and parameters (read from
its handler) set to missing, empty, 100k long, NUL, a lone surrogate or other bytes that
are not UTF-8, repeated, the wrong type, impossible dates, script, and its path
parameters to unknown, ``..``, ``%2F`` and very long ids; each form also without or with
a wrong CSRF token, as JSON, with a file for a field, oversized as multipart, and with
a body that is not UTF-8; each page with hostile session cookies. A NUL is also sent
where every other check passes, so that on PostgreSQL it would reach the store.
``test_every_console_route_is_probed`` keeps the list whole.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from urllib.parse import quote_plus

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth import service as auth_service
from tests.console.test_sessions import csrf_of
from tests.fixtures.console import CITIZEN, fuzz_ground

AGREEMENT = "identity-for-welfare"  # register's, in tests/fixtures/policies
# Markup that would run if a page echoed it unescaped; every hostile value below carries it
# in one form or another, and no page may contain it as it was sent.
MARKUP = "<x-fuzz>"
# Values as they go on the wire: already %-escaped, so bytes that are not UTF-8 get through.
HOSTILE = {
    "empty": "",
    "spaces": "+++",
    "long": "a" * 100_000,
    "nul": "%00",
    "nul-inside": "ab%00cd",
    "lone-surrogate": "%ED%A0%80",
    "not-utf8": "%FF%FE%C0%AF",
    "beyond-unicode": "%F4%90%80%80",
    "control": "%01%1B%7F%0D%0A",
    "markup": quote_plus(f"\"'>{MARKUP}"),
    "negative": "-1",
    "huge-number": "9" * 40,
    "float": "1e309",
    "date-zero": "0000-00-00",
    "date-past-end": "9999-12-32",
    "date-last": "9999-12-31",
    "date-year-10000": "10000-01-01",
    "date-with-time": "2026-01-01T25%3A00",
    "dotdot": "..%2F..%2Fetc%2Fpasswd",
    "unicode-digits": quote_plus("١٢٣"),
    "json": quote_plus('{"a":[[[[[[1]]]]]]}'),
    "deep-json": "%5B" * 5000,
}
# Path parameters as they go in the address.
HOSTILE_IDS = {
    "unknown": "no-such-agreement",
    "dotdot-escaped": "%2E%2E",
    "slash": "a%2Fb",
    "long": "a" * 10_000,
    "nul": "a%00b",
    "lone-surrogate": "a%ED%A0%80b",
    "not-utf8": "a%FFb",
    "markup": quote_plus(f"\"'>{MARKUP}").replace("+", "%20"),
    "space": "%20",
    "upper": AGREEMENT.upper(),
}
BAD_COOKIES = {"nul": "\x00", "long": "a" * 10_000, "non-ascii": "ä€", "markup": MARKUP}


@dataclass(frozen=True)
class Probe:
    """A console route, who may use it, and what its handler reads."""

    method: str
    path: str  # the route's template
    # "owner", "auditor", "portal", "leaver" (an owner, for sign-out), or None: open to all
    role: str | None
    fields: tuple[str, ...] = ()  # form fields (POST) or query parameters (GET)
    base: dict[str, str] = field(default_factory=dict)  # a good value for each, unescaped


DATE_PARTS = tuple(
    f"{name}-{part}" for name in ("valid_from", "valid_until") for part in ("day", "month", "year")
)
AGREEMENT_FORM = {
    "id": "fuzz-agreement",
    "consumer": "welfare",
    "fields": "address",
    "actions": "read",
    "purposes": "benefit-eligibility",
    "legal_basis": "Social Security Administration Act 1992, s.122",
    "valid_from-day": "1",
    "valid_from-month": "2",
    "valid_from-year": "2026",
    "reason": "fuzz",
}
AGREEMENT_FIELDS = (
    *AGREEMENT_FORM,
    *DATE_PARTS,
    "when",
    "require_case_ref",
    "disclosure",
    "max_delay",
    "effect",
    "basis",
    "signature",
    "verify",
    "step",
    "draft",
)
AUDIT_FILTERS = ("citizen_id", "consumer", "owner", "field", "purpose", "decision", "since", "until")
AUDIT_BASE = {"since": "2026-01-01", "until": "2026-12-31", "decision": "permit"}

PROBES = (
    Probe("GET", "/console/static/{name}", None),
    Probe("GET", "/console/sign-in", None, ("next", "signed_out")),
    Probe("POST", "/console/sign-in", None, ("client_id", "client_secret", "next")),
    Probe("POST", "/console/sign-out", "leaver"),
    Probe("GET", "/console/oidc/start", None, ("next",)),
    Probe("GET", "/console/oidc/callback", None, ("code", "state", "error")),
    Probe("GET", "/console", "owner"),
    Probe("GET", "/console/agreements/new", "owner"),
    Probe("POST", "/console/agreements/new", "owner", AGREEMENT_FIELDS, AGREEMENT_FORM),
    Probe("GET", "/console/agreements/{agreement_id}/edit", "owner"),
    Probe(
        "POST",
        "/console/agreements/{agreement_id}/edit",
        "owner",
        ("expected_version", *AGREEMENT_FIELDS),
        {**AGREEMENT_FORM, "expected_version": "1"},
    ),
    Probe("GET", "/console/agreements", "auditor"),
    Probe("GET", "/console/agreements/{agreement_id}/saved", "owner", ("version",), {"version": "1"}),
    Probe("GET", "/console/agreements/{agreement_id}", "auditor"),
    Probe(
        "GET", "/console/agreements/{agreement_id}/diff", "auditor", ("from", "to"), {"from": "1", "to": "1"}
    ),
    Probe("GET", "/console/agreements/{agreement_id}/revoke", "owner"),
    Probe(
        "POST",
        "/console/agreements/{agreement_id}/revoke",
        "owner",
        ("expected_version", "reason"),
        {"expected_version": "1", "reason": "fuzz"},
    ),
    Probe("GET", "/console/audit", "auditor", (*AUDIT_FILTERS, "after", "shown"), AUDIT_BASE),
    Probe("GET", "/console/audit/export.csv", "auditor", AUDIT_FILTERS, AUDIT_BASE),
    Probe("GET", "/console/audit/integrity", "auditor"),
    Probe("POST", "/console/audit/integrity/verify", "auditor"),
    Probe("GET", "/console/audit/usage", "auditor"),
    Probe("GET", "/console/value", "owner"),
    Probe("GET", "/console/citizen", "portal"),
    Probe("POST", "/console/citizen", "portal", ("citizen_id", "after", "shown"), {"citizen_id": CITIZEN}),
    Probe("GET", "/console/citizen/choices", "portal", ("citizen_id",), {"citizen_id": CITIZEN}),
    Probe(
        "POST",
        "/console/citizen/choices",
        "portal",
        ("citizen_id", "agreement", "consent_id", "change"),
        {"citizen_id": CITIZEN, "agreement": AGREEMENT, "change": "object"},
    ),
    Probe("GET", "/console/releases", "owner"),
    Probe("POST", "/console/releases/check", "owner", ("owner_key",)),
    Probe("GET", "/console/{rest:path}", None, ("after",)),
)


def encode(pairs: list[tuple[str, str]]) -> str:
    """A query or urlencoded body from pairs whose values are already %-escaped."""
    return "&".join(f"{quote_plus(name)}={value}" for name, value in pairs)


def good(probe: Probe) -> list[tuple[str, str]]:
    return [(name, quote_plus(value)) for name, value in probe.base.items()]


def path_of(probe: Probe, agreement_id: str = AGREEMENT) -> str:
    return (
        probe.path.replace("{agreement_id}", agreement_id)
        .replace("{name}", "console.css")
        .replace("{rest:path}", "no-such-page")
    )


class Server(logging.Handler):
    """The server's log, as its handler receives it: every record, kept for the checks."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def errors(self) -> list[str]:
        return [
            f"{r.levelname} {r.name}: {r.getMessage()}"
            for r in self.records
            if r.levelno >= logging.ERROR or r.exc_info
        ]


@dataclass
class Fuzz:
    clients: dict[str, httpx.AsyncClient]
    server: Server
    failures: list[str] = field(default_factory=list)

    def judge(self, label: str, response: httpx.Response) -> None:
        """Record what is wrong with one answer, if anything."""
        status = response.status_code
        errors = self.server.errors()
        self.server.records.clear()
        problems = []
        if status >= 500:
            problems.append(f"answered {status}")
        if errors:
            problems.append(f"logged {errors[0][:300]}")
        if 400 <= status < 500 and not response.headers.get("content-type", "").startswith("text/html"):
            problems.append(f"{status} as {response.headers.get('content-type')}")
        if not (200 <= status < 500):
            problems.append(f"status {status}")
        # An HTML page; the CSV export, an attachment, holds the log's text as it is.
        if response.headers.get("content-type", "").startswith("text/html") and MARKUP in response.text:
            problems.append("echoed markup unescaped")
        if problems:
            self.failures.append(f"{label}: {'; '.join(problems)}")

    async def send(
        self,
        label: str,
        role: str | None,
        method: str,
        url: str,
        *,
        content: bytes | str | None = None,
        content_type: str = "application/x-www-form-urlencoded",
        data: dict[str, str] | None = None,
        files: dict[str, tuple[str, bytes, str]] | None = None,
    ) -> httpx.Response:
        """Send one request as ``role`` and judge its answer: ``content`` as it is, with
        ``content_type``, or ``data`` and ``files`` as a multipart form."""
        client = self.clients[role or "anonymous"]
        headers = {"content-type": content_type} if content is not None else {}
        response = await client.request(method, url, content=content, data=data, files=files, headers=headers)
        self.judge(label, response)
        return response

    async def csrf(self, role: str | None) -> str:
        """The CSRF token of the role's forms (the leaver's, once signed out, is none)."""
        path = "/console/sign-in" if role is None else "/console"
        page = await self.clients[role or "anonymous"].get(path)
        return "signed-out" if role == "leaver" and page.status_code == 303 else csrf_of(page)


@pytest.fixture
async def fuzz(app: FastAPI, session: AsyncSession, catalog_loaded: None) -> AsyncIterator[Fuzz]:
    """The test policies in force, one citizen, and a signed-in client for each console role."""
    await fuzz_ground(app, session)
    server = Server()
    logger = logging.getLogger("tellonce")
    logger.addHandler(server)
    clients: dict[str, httpx.AsyncClient] = {}
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        for role, department, roles in (
            ("anonymous", None, None),
            ("owner", "register", ["data-owner"]),
            ("leaver", "register", ["data-owner"]),  # signs out while probed
            ("auditor", "audit-office", ["auditor"]),
            ("portal", "portal", ["citizen-portal"]),
        ):
            client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
            clients[role] = client
            if department is None or roles is None:
                continue
            created = await auth_service.create_client(session, department=department, roles=roles)
            assert created.client_secret is not None
            form = await client.get("/console/sign-in")
            data = {
                "csrf_token": csrf_of(form),
                "client_id": created.client_id,
                "client_secret": created.client_secret,
            }
            assert (await client.post("/console/sign-in", data=data)).status_code == 303
        await session.commit()
        yield Fuzz(clients, server)
    finally:
        logger.removeHandler(server)
        for client in clients.values():
            await client.aclose()


def probes(method: str) -> Iterator[Probe]:
    return (p for p in PROBES if p.method == method)


def test_every_console_route_is_probed(app: FastAPI) -> None:
    routes = {
        (method, context.path)
        for context in iter_route_contexts(app.routes)
        if (context.path or "").startswith("/console")
        for method in context.methods or ()
    }
    assert routes == {(p.method, p.path) for p in PROBES}


async def test_get_pages_take_hostile_query_parameters(fuzz: Fuzz) -> None:
    for probe in probes("GET"):
        path = path_of(probe)
        names = probe.fields or ("after",)  # a parameter the page does not read, at least
        for name in names:
            others = [(n, v) for n, v in good(probe) if n != name]
            for kind, value in HOSTILE.items():
                # httpx sends no address over 64k (nor does a browser much over that).
                query = encode([*others, (name, value[:60_000])])
                await fuzz.send(f"GET {path}?{name}={kind}", probe.role, "GET", f"{path}?{query}")
            repeated = encode([*others, (name, "1"), (name, "2"), (name, HOSTILE["markup"])])
            await fuzz.send(f"GET {path}?{name} repeated", probe.role, "GET", f"{path}?{repeated}")
        # Query text that is no pairs at all.
        for kind, raw in {
            "no-equals": "%ED%A0%80",
            "bare-&": "&&=&=",
            "percent": "%",
            "long": "a=" * 20_000,
        }.items():
            await fuzz.send(f"GET {path}?{kind}", probe.role, "GET", f"{path}?{raw}")
    assert fuzz.failures == [], "\n".join(fuzz.failures)


async def test_path_parameters_take_hostile_ids(fuzz: Fuzz) -> None:
    """An agreement id that is none is refused by its form, as the API refuses it, before
    the store is asked (a 400 page); an id of the right form that names no agreement, and
    an address a slash splits, are not found."""
    for probe in PROBES:
        if "{agreement_id}" not in probe.path:
            continue
        for kind, agreement_id in HOSTILE_IDS.items():
            path = path_of(probe, agreement_id)
            if probe.method == "GET":
                answer = await fuzz.send(
                    f"GET {probe.path} id={kind}", probe.role, "GET", f"{path}?{encode(good(probe))}"
                )
            else:
                body = encode([("csrf_token", await fuzz.csrf(probe.role)), *good(probe)])
                answer = await fuzz.send(
                    f"POST {probe.path} id={kind}", probe.role, "POST", path, content=body
                )
            if kind not in ("unknown", "slash"):
                assert answer.status_code == 400, f"{probe.method} {probe.path} id={kind}"
                assert "There is a problem with the request" in answer.text
    for name in ("..%2Fconsole.css", "%2E%2E", "console.css%00", "a" * 10_000, "%ED%A0%80", "console.CSS"):
        await fuzz.send(f"GET static {name[:20]}", None, "GET", f"/console/static/{name}")
    for rest in ("%2E%2E", "%2F%2F", "a%00", "a" * 10_000, "%ED%A0%80", quote_plus(MARKUP)):
        await fuzz.send(f"GET /console/{rest[:20]}", "owner", "GET", f"/console/{rest}")
    assert fuzz.failures == [], "\n".join(fuzz.failures)


async def test_forms_take_hostile_fields(fuzz: Fuzz) -> None:
    for probe in probes("POST"):
        path = path_of(probe)
        token = await fuzz.csrf(probe.role)
        for name in probe.fields:
            others = [(n, v) for n, v in good(probe) if n != name]
            base = [("csrf_token", token), *others]
            await fuzz.send(f"POST {path} without {name}", probe.role, "POST", path, content=encode(base))
            for kind, value in HOSTILE.items():
                body = encode([*base, (name, value)])
                await fuzz.send(f"POST {path} {name}={kind}", probe.role, "POST", path, content=body)
            repeated = encode([*base, (name, "1"), (name, HOSTILE["markup"]), (name, HOSTILE["nul"])])
            await fuzz.send(f"POST {path} {name} repeated", probe.role, "POST", path, content=repeated)
            # Raw bytes that are not UTF-8, not %-escaped.
            raw = encode(base).encode() + b"&" + name.encode() + b"=\xff\xfe\xed\xa0\x80"
            await fuzz.send(f"POST {path} {name}=raw bytes", probe.role, "POST", path, content=raw)
            # A file where text is expected.
            upload = {name: ("x.txt", b"\x00\xff" + MARKUP.encode(), "text/html")}
            data = {"csrf_token": token, **probe.base}
            await fuzz.send(f"POST {path} {name}=file", probe.role, "POST", path, data=data, files=upload)
    assert fuzz.failures == [], "\n".join(fuzz.failures)


async def test_forms_refuse_bad_bodies_and_tokens(fuzz: Fuzz) -> None:
    for probe in probes("POST"):
        path = path_of(probe)
        token = await fuzz.csrf(probe.role)
        fields = good(probe)
        cases: dict[str, tuple[bytes | str, str]] = {
            "no csrf": (encode(fields), "application/x-www-form-urlencoded"),
            "two csrf": (
                encode([("csrf_token", token), ("csrf_token", "0" * 64), *fields]),
                "application/x-www-form-urlencoded",
            ),
            "as json": (json.dumps({"csrf_token": token}), "application/json"),
            "as text": (f"csrf_token={token}", "text/plain"),
            "no content type": (f"csrf_token={token}", ""),
            "bad multipart": (f"csrf_token={token}", "multipart/form-data"),
            "bad boundary": (
                "--x\r\nContent-Disposition: form-data\r\n\r\n",
                "multipart/form-data; boundary=x",
            ),
            "raw bytes": (
                b"\xff\xfe=\xed\xa0\x80&csrf_token=" + token.encode(),
                "application/x-www-form-urlencoded",
            ),
            "charset": (
                encode([("csrf_token", token), *fields]),
                "application/x-www-form-urlencoded; charset=utf-16",
            ),
            "many fields": (
                "&".join(f"f{i}=1" for i in range(1500)) + f"&csrf_token={token}",
                "application/x-www-form-urlencoded",
            ),
        }
        for kind, value in HOSTILE.items():
            cases[f"csrf={kind}"] = (
                encode([("csrf_token", value), *fields]),
                "application/x-www-form-urlencoded",
            )
        for kind, (content, content_type) in cases.items():
            await fuzz.send(
                f"POST {path} {kind}", probe.role, "POST", path, content=content, content_type=content_type
            )
        # An oversized part, and an oversized body.
        big = {"reason": ("big.txt", b"a" * (2 * 1024 * 1024), "text/plain")}
        # The body limit's refusal (errors.BodyLimitMiddleware), made before the route runs.
        part = await fuzz.send(
            f"POST {path} big part", probe.role, "POST", path, data={"csrf_token": token}, files=big
        )
        assert part.status_code == 413
        too_big = encode([("csrf_token", token), ("reason", "a" * 20_000_000)])
        answer = await fuzz.send(f"POST {path} big body", probe.role, "POST", path, content=too_big)
        assert answer.status_code == 413
        assert answer.headers["content-security-policy"].startswith("default-src 'self'")
    assert fuzz.failures == [], "\n".join(fuzz.failures)


async def test_pages_take_hostile_cookies(fuzz: Fuzz) -> None:
    for probe in PROBES:
        path = path_of(probe)
        for kind, value in BAD_COOKIES.items():
            for cookie in ("tellonce_console", "tellonce_console_pre", "tellonce_console_oidc"):
                raw = f"{cookie}={value}".encode("utf-8", "surrogateescape")
                client = fuzz.clients["anonymous"]
                response = await client.request(
                    probe.method,
                    path,
                    headers={b"cookie": raw},
                    content=b"csrf_token=x" if probe.method == "POST" else None,
                )
                fuzz.judge(f"{probe.method} {path} cookie {cookie}={kind}", response)
    for method in ("PUT", "DELETE", "PATCH"):
        await fuzz.send(f"{method} /console/agreements", "owner", method, "/console/agreements")
    assert fuzz.failures == [], "\n".join(fuzz.failures)


async def test_text_the_store_cannot_keep_is_refused_on_a_page(fuzz: Fuzz) -> None:
    """A NUL where every other check passes: in a revoke's reason, and in a saved draft's
    reason, legal basis and condition. PostgreSQL's text cannot hold one and SQLite's can,
    so the policy rules refuse it before the store is asked, alike on both: nothing is
    saved, and the page says why."""
    answers: list[httpx.Response] = []
    token = await fuzz.csrf("owner")
    revoke = encode([("csrf_token", token), ("expected_version", "1"), ("reason", "a%00b")])
    answers.append(
        await fuzz.send(
            "revoke reason=nul", "owner", "POST", f"/console/agreements/{AGREEMENT}/revoke", content=revoke
        )
    )
    draft = {
        "id": "fuzz-agreement",
        "consumer": "welfare",
        "fields": ["address"],
        "actions": ["read"],
        "purposes": ["benefit-eligibility"],
        "effect": "permit",
        "legal_basis": "Social Security Administration Act 1992, s.122",
    }
    # Each its own new agreement and its own agreement changed, so SQLite saves them all.
    for label, changes, reason, changed in (
        ("reason", {"id": "fuzz-reason"}, "a%00b", "lookup-for-welfare"),
        ("legal basis", {"id": "fuzz-basis", "legal_basis": "a\x00b"}, "fuzz", "deaths-to-welfare"),
        (
            "when",
            {"id": "fuzz-when", "when": "citizen.status == 'a\x00b'"},
            "fuzz",
            "address-updates-from-dvla",
        ),
    ):
        body = encode(
            [
                ("csrf_token", token),
                ("step", "save"),
                ("draft", quote_plus(json.dumps(draft | changes))),
                ("reason", reason),
            ]
        )
        answers.append(
            await fuzz.send(f"save {label}=nul", "owner", "POST", "/console/agreements/new", content=body)
        )
        edit = encode(
            [
                ("csrf_token", token),
                ("step", "save"),
                ("expected_version", "1"),
                ("draft", quote_plus(json.dumps(draft | changes | {"id": changed}))),
                ("reason", reason),
            ]
        )
        answers.append(
            await fuzz.send(
                f"edit {label}=nul",
                "owner",
                "POST",
                f"/console/agreements/{changed}/edit",
                content=edit,
            )
        )
    assert fuzz.failures == [], "\n".join(fuzz.failures)
    for answer in answers:
        assert answer.status_code == 422, answer.text[:2000]
        assert answer.headers["content-type"].startswith("text/html")
        assert "must not contain a nul character" in answer.text.lower()


async def test_an_audit_search_for_text_that_is_no_citizen_id_is_refused_on_its_form(fuzz: Fuzz) -> None:
    """The citizen filter takes a citizen id, as the citizen pages do (capitals allowed);
    other text is refused beside its box and never reaches the store."""
    for kind in ("nul", "nul-inside", "markup", "long", "dotdot", "control"):
        value = HOSTILE[kind][:60_000]
        page = await fuzz.send(
            f"audit citizen_id={kind}", "auditor", "GET", f"/console/audit?citizen_id={value}"
        )
        assert page.status_code == 400
        assert 'id="citizen_id-error"' in page.text
        export = await fuzz.send(
            f"export citizen_id={kind}", "auditor", "GET", f"/console/audit/export.csv?citizen_id={value}"
        )
        assert export.status_code == 400
        assert "A citizen ID is 36 characters" in export.text
    found = await fuzz.send(
        "audit citizen_id=capitals", "auditor", "GET", f"/console/audit?citizen_id={CITIZEN.upper()}"
    )
    assert found.status_code == 200
    assert fuzz.failures == [], "\n".join(fuzz.failures)
