"""No plaintext personal data in the database, the logs, the traces, the metrics, the audit
or error messages: end to end through a real ``tellonce serve``.

One server on loopback, logging at DEBUG, exporting its spans over OTLP/HTTP to a collector
in this test, is driven by real clients (client_secret_basic tokens) through registration,
lookup, reads, batch-get, verify, history, PATCH, consent, erasure and every failure path
that could echo an input: values of the wrong type or too long, bad national ids, refused
decisions, unknown citizens, malformed JSON, a duplicate national id, a national id where a
citizen id belongs. Every value sent is a distinctive canary. Then each place a value could
escape to is scanned for every canary, as UTF-8, JSON-escaped and (for a dump) hex:

- the server's stdout and stderr (its JSON log lines, uvicorn's own lines);
- every answer, except a successful read by a party the agreements allow (which holds the
  values it asked for, and only those);
- ``/metrics``;
- the exported spans;
- the raw SQLite file and WAL, or a ``pg_dump`` of the PostgreSQL database;
- the audit export, as JSON lines and as CSV.

The module's own sibling tests cover the same stores for values written below the API
(tests/crypto/test_plaintext_scan.py) and erasure (tests/records/test_erasure_at_rest.py).
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from service.auth import service as auth_service
from service.config import Settings
from service.db import Database
from service.policy import service as policy_service
from service.policy.loader import load_policy_folder
from tests.conftest import TEST_POLICIES, server_env
from tests.crypto.test_plaintext_scan import pg_dump
from tests.fixtures.databases import (
    SQLITE_PREFIX,
    create_scratch_database,
    drop_scratch_database,
    is_postgres,
)
from tests.fixtures.server import LiveServer, free_port, start_server

# name -> (department, roles)
CLIENTS: dict[str, tuple[str, str]] = {
    "registrar": ("register", "registrar,writer"),
    "owner": ("register", "data-owner"),
    "welfare": ("welfare", "consumer"),
    "dvla": ("dvla", "consumer,writer"),
    "revenue": ("revenue", "consumer"),
    "portal": ("portal", "citizen-portal"),
    "auditor": ("audit-office", "auditor"),
}
# Revenue reads given names only with the citizen's consent.
CONSENTED = {
    "id": "revenue-reads-names-with-consent",
    "consumer": "revenue",
    "fields": ["given_name"],
    "actions": ["read"],
    "purposes": ["tax-administration"],
    "legal_basis": "the citizen's consent",
    "basis": "consent",
    "reason": "leak tests",
}
CITIZENS = 3
# A refusal: 403, or 404 where saying more would tell that the citizen exists.
REFUSED = (403, 404)


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that keeps every export's raw body."""

    bodies: list[bytes]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.server.bodies.append(self.rfile.read(length))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def collector() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    server.bodies = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def forms(text: str) -> list[bytes]:
    """How ``text`` would look in a log line, an answer, a span or a dump."""
    raw = text.encode()
    escaped = json.dumps(text)[1:-1].encode()  # ensure_ascii: \\u00fe for a non-ASCII letter
    return list(dict.fromkeys([raw, escaped, raw.hex().encode(), text.encode("utf-16-le")]))


def found(blob: bytes, canaries: set[str]) -> list[str]:
    return sorted(c for c in canaries if any(form in blob for form in forms(c)))


@dataclass
class Canaries:
    """Per citizen the values registered; and values only ever sent in requests that fail."""

    tag: str = field(default_factory=lambda: secrets.token_hex(4).upper())
    citizens: list[dict[str, str]] = field(default_factory=list)
    refused: set[str] = field(default_factory=set)
    # The citizens' ids, in clear wherever their records are: the scans' positive control.
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = random.Random(self.tag)
        for n in range(CITIZENS):
            self.citizens.append(
                {
                    "national_id": f"QX{self.tag}{n:02d}LK",
                    "given_name": f"Þórdís~{self.tag}{n}Canarý",
                    "address": f"{n} Wyvernhölm Row {self.tag}",
                    "date_of_birth": str(date(1920, 1, 1) + timedelta(days=rng.randrange(30 * 365))),
                }
            )

    def refuse(self, text: str) -> str:
        self.refused.add(text)
        return text

    @property
    def stored(self) -> set[str]:
        return {value for citizen in self.citizens for value in citizen.values()}

    @property
    def every(self) -> set[str]:
        return self.stored | self.refused


@dataclass
class Site:
    server: LiveServer
    http: httpx.AsyncClient
    secrets: dict[str, tuple[str, str]]
    database_url: str
    collector: ThreadingHTTPServer
    tokens: dict[str, str] = field(default_factory=dict)
    # (what was asked, the answer, the canaries the answer may hold)
    answers: list[tuple[str, httpx.Response, set[str]]] = field(default_factory=list)

    async def token(self, name: str) -> str:
        if name not in self.tokens:
            client_id, secret = self.secrets[name]
            answer = await self.http.post(
                "/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
            )
            assert answer.status_code == 200, answer.text
            self.tokens[name] = answer.json()["access_token"]
        return self.tokens[name]

    async def call(
        self,
        who: str,
        method: str,
        url: str,
        *,
        may_hold: set[str] | None = None,
        expect: int | tuple[int, ...],
        **kwargs: Any,
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {await self.token(who)}", **kwargs.pop("headers", {})}
        answer = await self.http.request(method, url, headers=headers, **kwargs)
        assert answer.status_code in (expect if isinstance(expect, tuple) else (expect,)), (
            f"{method} {url}: {answer.status_code} {answer.text}"
        )
        self.answers.append((f"{who} {method} {url}", answer, may_hold or set()))
        return answer


async def _prepare(url: str, data: Path, root_key: str) -> dict[str, tuple[str, str]]:
    settings = Settings(env="test", database_url=url, data_dir=data, root_key=root_key)  # type: ignore[arg-type]
    database = Database(settings)
    made: dict[str, tuple[str, str]] = {}
    try:
        async with database.sessions.begin() as session:
            await policy_service.apply_folder(
                session, load_policy_folder(TEST_POLICIES), author="tests", reason="leak tests", prune=False
            )
            for name, (department, roles) in CLIENTS.items():
                created = await auth_service.create_client(
                    session, department=department, roles=roles.split(",")
                )
                assert created.client_secret is not None
                made[name] = (created.client_id, created.client_secret)
    finally:
        await database.dispose()
    return made


@pytest.fixture(scope="module")
async def site(
    database_url: str, root_key: str, tmp_path_factory: pytest.TempPathFactory, collector: ThreadingHTTPServer
) -> AsyncIterator[Site]:
    url = await create_scratch_database(database_url)
    data = tmp_path_factory.mktemp("leak-data")
    try:
        made = await _prepare(url, data, root_key)
        port = free_port()
        env = server_env(url, data, root_key) | {
            "TELLONCE_PUBLIC_URL": f"http://127.0.0.1:{port}",
            # The most the service logs.
            "TELLONCE_LOG_LEVEL": "DEBUG",
            "TELLONCE_LOG_JSON": "true",
            "TELLONCE_VERIFY_UNCONSTRAINED_PER_DAY": "1000",
            "TELLONCE_AUDIT_CHECKPOINT_INTERVAL_MS": "50",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_address[1]}",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "none",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        server = await asyncio.to_thread(start_server, env, data / "server.log", timeout=90, port=port)
        try:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
                yield Site(server, http, made, url, collector)
        finally:
            server.stop()
    finally:
        await drop_scratch_database(url)


@pytest.fixture(scope="module")
async def exercised(site: Site) -> tuple[Site, Canaries, dict[str, bytes]]:
    """Drive every route that takes personal data, then stop the server and collect what it left."""
    canaries = Canaries()
    await _exercise(site, canaries)
    sinks: dict[str, bytes] = {}
    sinks["metrics"] = (await site.http.get("/metrics")).content
    for fmt in ("jsonl", "csv"):
        export = await site.call("auditor", "GET", "/v1/audit/export", params={"format": fmt}, expect=200)
        sinks[f"audit export ({fmt})"] = export.content
    site.server.stop()
    sinks["server log"] = site.server.log_path.read_bytes()
    sinks["spans"] = b"".join(site.collector.bodies)  # type: ignore[attr-defined]
    if is_postgres(site.database_url):
        sinks["pg_dump"] = await pg_dump(site.database_url)
    else:
        path = Path(site.database_url[len(SQLITE_PREFIX) :])
        sinks["database files"] = b"".join(
            p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name)
        )
    return site, canaries, sinks


async def _exercise(site: Site, canaries: Canaries) -> None:
    call = site.call
    benefit = {"purpose": "benefit-eligibility"}
    ids = canaries.ids

    # Registration, by the register's registrar.
    for values in canaries.citizens:
        fields = {k: v for k, v in values.items() if k != "national_id"}
        answer = await call(
            "registrar",
            "POST",
            "/v1/citizens",
            json={"national_id": values["national_id"], "fields": fields},
            may_hold=set(values.values()),
            expect=201,
        )
        ids.append(answer.json()["id"])
    first, second, third = canaries.citizens
    unknown = str(uuid.uuid4())

    # A duplicate national id (spelt with spaces, which the canonical form removes).
    spaced = first["national_id"][:4] + " " + first["national_id"][4:]
    await call("registrar", "POST", "/v1/citizens", json={"national_id": spaced}, expect=409)
    await call("registrar", "POST", "/v1/citizens", json={"national_id": first["national_id"]}, expect=409)
    # Bad national ids, each holding a canary.
    tag = canaries.tag
    for bad, status in (
        (canaries.refuse(f"QX{tag}\u200bZW"), 422),  # an invisible character
        (canaries.refuse(f"QX{tag}" + "LONG" * 16), 422),  # longer than the body allows
    ):
        await call("registrar", "POST", "/v1/citizens", json={"national_id": bad}, expect=status)
        await call(
            "welfare", "POST", "/v1/citizens/lookup", json={"national_id": bad, **benefit}, expect=status
        )
    # Bad values: the wrong type, too long, not a date, a control character.
    for name, bad in (
        ("given_name", canaries.refuse(f"Ŧoolong~{tag}" + "x" * 120)),
        ("address", canaries.refuse(f"Ctrl~{tag}\x07Lane")),
        ("date_of_birth", canaries.refuse(f"Notadate~{tag}")),
        ("date_of_birth", canaries.refuse(f"19{tag[:2].translate(str.maketrans('ABCDEF', '012345'))}-13-45")),
    ):
        await call(
            "registrar",
            "POST",
            "/v1/citizens",
            json={
                "national_id": canaries.refuse(f"QX{tag}NEW{len(canaries.refused)}"),
                "fields": {name: bad},
            },
            expect=422,
        )
        await call(
            "registrar",
            "PATCH",
            f"/v1/citizens/{ids[0]}/fields",
            json={"fields": {name: bad}, "reason": "correction"},
            expect=422,
        )
    await call(
        "registrar",
        "PATCH",
        f"/v1/citizens/{ids[0]}/fields",
        json={
            "fields": {"given_name": ["Listy", canaries.refuse(f"Wrongtype~{tag}")]},
            "reason": "correction",
        },
        expect=422,
    )
    # A national id (or a value) where a field name or an operator belongs: as a key the
    # field-name pattern refuses, as one it allows but the catalog does not know.
    lowered = canaries.refuse(f"qx{tag.lower()}lowered")
    for key in (first["national_id"], lowered):
        await call(
            "registrar",
            "POST",
            "/v1/citizens",
            json={"national_id": canaries.refuse(f"QX{tag}KEY{len(canaries.refused)}"), "fields": {key: "x"}},
            expect=422,
        )
        await call(
            "registrar",
            "PATCH",
            f"/v1/citizens/{ids[0]}/fields",
            json={"fields": {key: "x"}, "reason": "correction"},
            expect=422,
        )
        await call(
            "welfare",
            "POST",
            f"/v1/citizens/{ids[0]}/verify",
            json={**benefit, "claims": {key: {"eq": "x"}}},
            expect=422,
        )
        await call(
            "welfare",
            "POST",
            f"/v1/citizens/{ids[0]}/verify",
            json={**benefit, "claims": {"given_name": {key: "x"}}},
            expect=422,
        )
        await call(
            "welfare",
            "POST",
            f"/v1/citizens/{ids[0]}/verify",
            json={**benefit, "claims": {key: "not a claim"}},
            expect=422,
        )
    # Malformed JSON holding a canary, and a body that is not JSON at all.
    malformed = canaries.refuse(f"QX{tag}MALFORMED")
    await call(
        "registrar",
        "POST",
        "/v1/citizens",
        content=f'{{"national_id": "{malformed}", "fields": {{"given_name": "Mal'.encode(),
        headers={"Content-Type": "application/json"},
        expect=400,
    )
    await call(
        "welfare",
        "POST",
        "/v1/citizens/lookup",
        content=f"national_id={malformed}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        expect=415,
    )

    # Lookup: known, unknown, refused (no lookup agreement for revenue, wrong purpose).
    found_id = await call(
        "welfare", "POST", "/v1/citizens/lookup", json={"national_id": spaced, **benefit}, expect=200
    )
    assert found_id.json()["id"] == ids[0]
    never = canaries.refuse(f"QX{tag}NEVERREG")
    await call("welfare", "POST", "/v1/citizens/lookup", json={"national_id": never, **benefit}, expect=404)
    await call(
        "revenue",
        "POST",
        "/v1/citizens/lookup",
        json={"national_id": first["national_id"], "purpose": "tax-administration"},
        expect=404,
    )
    await call(
        "welfare",
        "POST",
        "/v1/citizens/lookup",
        json={"national_id": first["national_id"], "purpose": "tax-administration"},
        expect=404,
    )

    # Reads: allowed (the values asked for), partly withheld, refused, unknown, malformed ids.
    await call(
        "welfare",
        "GET",
        f"/v1/citizens/{ids[0]}",
        params={"fields": "given_name,address,date_of_birth,national_id", **benefit},
        may_hold=set(first.values()),
        expect=200,
    )
    await call(
        "dvla", "GET", f"/v1/citizens/{ids[0]}", params={"fields": "given_name", **benefit}, expect=REFUSED
    )
    await call("welfare", "GET", f"/v1/citizens/{unknown}", params=benefit, expect=404)
    # A national id where the citizen id belongs, in the path and in the query.
    await call("welfare", "GET", f"/v1/citizens/{first['national_id']}", params=benefit, expect=422)
    await call(
        "welfare",
        "GET",
        f"/v1/citizens/{ids[0]}",
        params={"fields": first["national_id"], **benefit},
        expect=422,
    )
    await call(
        "welfare", "GET", f"/v1/citizens/{ids[0]}", params={"purpose": first["national_id"]}, expect=422
    )

    # Batch get: allowed, with an unknown id; refused; a national id in the list.
    await call(
        "welfare",
        "POST",
        "/v1/citizens/batch-get",
        json={"ids": [ids[0], ids[1], unknown], "fields": ["given_name", "address"], **benefit},
        may_hold={first["given_name"], first["address"], second["given_name"], second["address"]},
        expect=200,
    )
    await call(
        "dvla",
        "POST",
        "/v1/citizens/batch-get",
        json={"ids": [ids[0], ids[1]], "fields": ["given_name"], **benefit},
        expect=200,  # each citizen withheld
    )
    await call(
        "welfare",
        "POST",
        "/v1/citizens/batch-get",
        json={"ids": [ids[0], first["national_id"]], **benefit},
        expect=422,
    )

    # Verify: a match, a mismatch, an operand of the wrong type, a refused purpose.
    verify = f"/v1/citizens/{ids[0]}/verify"
    matched = await call(
        "welfare",
        "POST",
        verify,
        json={
            **benefit,
            "claims": {
                "given_name": {"eq": first["given_name"]},
                "date_of_birth": {"eq": first["date_of_birth"]},
            },
        },
        expect=200,
    )
    assert matched.json()["results"] == {"given_name": True, "date_of_birth": True}
    mismatched = await call(
        "welfare",
        "POST",
        verify,
        json={
            **benefit,
            "claims": {
                "given_name": {"eq": canaries.refuse(f"Wrongname~{tag}")},
                "address": {"in": [second["address"]]},
            },
        },
        expect=200,
    )
    assert mismatched.json()["results"] == {"given_name": False, "address": False}
    await call(
        "welfare",
        "POST",
        verify,
        json={**benefit, "claims": {"date_of_birth": {"lte": canaries.refuse(f"Notadate~{tag}~verify")}}},
        expect=422,
    )
    await call(
        "welfare",
        "POST",
        verify,
        json={"purpose": "tax-administration", "claims": {"given_name": {"eq": first["given_name"]}}},
        expect=REFUSED,
    )
    await call(
        "welfare",
        "POST",
        f"/v1/citizens/{unknown}/verify",
        json={**benefit, "claims": {"given_name": {"eq": first["given_name"]}}},
        expect=404,
    )

    # PATCH: the owner, a delegate (dvla writes addresses), a stale ETag, someone not allowed.
    current = await call(
        "registrar",
        "PATCH",
        f"/v1/citizens/{ids[1]}/fields",
        json={"fields": {"given_name": second["given_name"] + "Ⅱ"}, "reason": "correction"},
        may_hold={second["given_name"] + "Ⅱ"},
        expect=200,
    )
    canaries.citizens[1]["given_name_2"] = second["given_name"] + "Ⅱ"
    moved = f"{1} Wyvernhölm Moved {tag}"
    await call(
        "dvla",
        "PATCH",
        f"/v1/citizens/{ids[1]}/fields",
        json={"fields": {"address": moved}, "reason": "licence address", "purpose": "address-update"},
        may_hold={moved},
        expect=200,
    )
    canaries.citizens[1]["address_2"] = moved
    await call(
        "registrar",
        "PATCH",
        f"/v1/citizens/{ids[1]}/fields",
        json={"fields": {"address": canaries.refuse(f"Stale~{tag}")}, "reason": "correction"},
        headers={"If-Match": current.headers["ETag"]},
        expect=412,
    )
    await call(
        "dvla",
        "PATCH",
        f"/v1/citizens/{ids[1]}/fields",
        json={
            "fields": {"given_name": canaries.refuse(f"Notallowed~{tag}")},
            "reason": "x",
            "purpose": "address-update",
        },
        expect=REFUSED,
    )
    await call(
        "registrar",
        "PATCH",
        f"/v1/citizens/{unknown}/fields",
        json={"fields": {"given_name": canaries.refuse(f"Nobody~{tag}")}, "reason": "x"},
        expect=404,
    )

    # History: refused (no history agreement), unknown field, unknown citizen.
    await call(
        "welfare", "GET", f"/v1/citizens/{ids[1]}/fields/address/history", params=benefit, expect=REFUSED
    )
    await call("welfare", "GET", f"/v1/citizens/{unknown}/fields/address/history", params=benefit, expect=404)

    # Consent: refused before, allowed after, refused again once revoked.
    await call("owner", "POST", "/v1/policies", json=CONSENTED, expect=201)
    tax = {"purpose": "tax-administration", "fields": "given_name"}
    await call("revenue", "GET", f"/v1/citizens/{ids[2]}", params=tax, expect=REFUSED)
    given = await call(
        "portal", "POST", f"/v1/citizens/{ids[2]}/consents", json={"agreement": CONSENTED["id"]}, expect=201
    )
    await call(
        "revenue", "GET", f"/v1/citizens/{ids[2]}", params=tax, may_hold={third["given_name"]}, expect=200
    )
    await call(
        "portal",
        "PATCH",
        f"/v1/citizens/{ids[2]}/consents/{given.json()['id']}",
        json={"status": "revoked"},
        expect=200,
    )
    await call("revenue", "GET", f"/v1/citizens/{ids[2]}", params=tax, expect=REFUSED)
    await call("portal", "GET", f"/v1/citizens/{ids[2]}/consents", expect=200)
    await call("portal", "GET", f"/v1/citizens/{ids[0]}/access-log", expect=200)

    # Erasure, then every way back to the erased record.
    await call(
        "registrar",
        "DELETE",
        f"/v1/citizens/{ids[2]}",
        params={"reason": "data-subject-request", "legal_basis": "UK GDPR Art. 17"},
        expect=204,
    )
    await call("welfare", "GET", f"/v1/citizens/{ids[2]}", params=benefit, expect=410)
    await call(
        "welfare",
        "POST",
        "/v1/citizens/lookup",
        json={"national_id": third["national_id"], **benefit},
        expect=404,
    )
    await call(
        "welfare",
        "POST",
        f"/v1/citizens/{ids[2]}/verify",
        json={**benefit, "claims": {"given_name": {"eq": third["given_name"]}}},
        expect=410,
    )
    await call(
        "welfare",
        "POST",
        "/v1/citizens/batch-get",
        json={"ids": [ids[2]], **benefit},
        expect=200,
    )
    await call("auditor", "GET", "/v1/audit/entries", params={"citizen_id": ids[0]}, expect=200)
    # The spans of the last requests reach the collector before the server stops.
    await asyncio.sleep(0.5)


class TestNoPlaintextAnywhere:
    def test_the_scenario_ran_and_every_sink_was_read(
        self, exercised: tuple[Site, Canaries, dict[str, bytes]]
    ) -> None:
        site, canaries, sinks = exercised
        assert len(site.answers) > 60
        assert b'"logger": "tellonce.access"' in sinks["server log"]
        assert b"tellonce_http_requests_total" in sinks["metrics"]
        # The spans were exported, and they name routes by template.
        assert b"/v1/citizens/{citizen_id}" in sinks["spans"]
        assert len(sinks["audit export (jsonl)"].splitlines()) > 20
        # Each scan reads what was really kept: the citizen ids are in clear in each.
        database = sinks.get("pg_dump", sinks.get("database files", b""))
        for sink in (database, sinks["audit export (jsonl)"], sinks["audit export (csv)"]):
            assert all(citizen.encode() in sink for citizen in canaries.ids)

    def test_no_failure_answer_echoes_a_value(
        self, exercised: tuple[Site, Canaries, dict[str, bytes]]
    ) -> None:
        site, canaries, _ = exercised
        leaks = [
            (asked, answer.status_code, answer.text)
            for asked, answer, allowed in site.answers
            if found(answer.content + str(answer.headers).encode(), canaries.every - allowed)
        ]
        assert leaks == []

    @pytest.mark.parametrize(
        "sink", ["server log", "metrics", "spans", "audit export (jsonl)", "audit export (csv)", "database"]
    )
    def test_no_value_in(self, exercised: tuple[Site, Canaries, dict[str, bytes]], sink: str) -> None:
        _, canaries, sinks = exercised
        blob = sinks[sink] if sink != "database" else sinks.get("pg_dump", sinks.get("database files", b""))
        assert blob
        assert found(blob, canaries.every) == []


class TestNoLevelThatLogsPaths:
    """uvicorn's TRACE level, below DEBUG, logs each request's scope: its path and query as
    sent, where a caller may have put a national id. The service refuses it."""

    @pytest.mark.parametrize("level", ["TRACE", "trace", "5", "VERBOSE"])
    def test_a_level_below_debug_or_unknown_is_refused(self, level: str) -> None:
        with pytest.raises(ValidationError, match="TELLONCE_LOG_LEVEL must be one of"):
            Settings(log_level=level)

    @pytest.mark.parametrize(
        ("level", "kept"), [("debug", "DEBUG"), (" Info ", "INFO"), ("WARNING", "WARNING")]
    )
    def test_the_standard_levels_are_kept_upper_cased(self, level: str, kept: str) -> None:
        assert Settings(log_level=level).log_level == kept

    def test_serve_will_not_start_at_trace(self, tmp_path: Path, root_key: str, database_url: str) -> None:
        env = server_env(database_url, tmp_path, root_key) | {"TELLONCE_LOG_LEVEL": "TRACE"}
        refused = ""
        try:
            server = start_server(env, tmp_path / "server.log", timeout=30)
        except RuntimeError as exc:
            refused = str(exc)
        else:
            server.stop()  # the old code served: stop it before failing
        assert "TELLONCE_LOG_LEVEL must be one of" in refused
        assert "Traceback" not in refused
