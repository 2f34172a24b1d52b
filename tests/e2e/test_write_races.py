"""Requests sent together to one real ``tellonce serve`` process, on one database.

Each test fires a batch of simultaneous requests (httpx over loopback, as department
systems would) at the same citizen, agreement, consent or subscription, a few rounds
over, and checks what a sequence of the same requests would give: no 500, no lost or
doubled write, one outbox event per committed write, and every audit entry of a refused
request a refusal. Each ends with the whole-log check of ``tellonce audit verify``.

Races already tested elsewhere are not repeated here: writers sharing an ETag and
erasures racing writes (tests/records/test_citizens_api.py), a registration racing
national id writes (tests/records/test_national_ids.py), consents given together
(tests/consent/test_api.py) and cases closed together (tests/events/test_access_notices.py).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from service.audit.checkpoint import NoteVerifier
from service.audit.service import verify_stored_log
from service.config import Settings
from service.db import Database
from tests.conftest import server_env
from tests.consent.conftest import CONSENTED
from tests.fixtures.auth import create_clients
from tests.fixtures.databases import create_scratch_database, drop_scratch_database
from tests.fixtures.server import LiveServer, start_server
from tests.records.conftest import RECORDS_POLICIES, apply_policies

pytestmark = pytest.mark.e2e

PROBLEM = "application/problem+json"
ERASURE = {"reason": "registered-in-error", "legal_basis": "UK GDPR Art. 17(1)(d)"}
OWNERS = 5
# How many requests each batch sends at once.
N = 20
CLIENTS = {
    "registrar": ("register", "registrar"),
    "writer": ("register", "writer"),
    "welfare": ("welfare", "consumer"),
    "portal": ("portal", "citizen-portal"),
    "auditor": ("audit-office", "auditor"),
    "welfare-owner": ("welfare", "data-owner"),
    # Several clients of the owning department, changing its agreements at once.
    **{f"owner{n}": ("register", "data-owner") for n in range(OWNERS)},
}
HEARS_MOVES = {
    "id": "welfare-hears-of-moves",
    "consumer": "welfare",
    "fields": ["address", "given_name"],
    "actions": ["subscribe"],
    "purposes": ["benefit-eligibility"],
    "legal_basis": "Social Security Administration Act 1992, s.122",
}


@dataclass
class World:
    """The server, a client per role with its token, and the server's database."""

    server: LiveServer
    http: httpx.AsyncClient
    bearer: dict[str, dict[str, str]]
    database: Database

    def h(self, who: str, **extra: str) -> dict[str, str]:
        """``who``'s bearer header, with ``extra`` headers."""
        return {**self.bearer[who], **extra}

    async def sql(self, query: str, **params: Any) -> list[Any]:
        async with self.database.engine.connect() as conn:
            return list((await conn.execute(text(query), params)).all())

    async def register(self, **fields: Any) -> str:
        answer = await self.http.post(
            "/v1/citizens",
            json={"national_id": f"NI{uuid.uuid4().hex[:10].upper()}", "fields": fields},
            headers=self.h("registrar"),
        )
        assert answer.status_code == 201, answer.text
        return str(answer.json()["id"])

    async def entries(self, **where: str) -> list[dict[str, Any]]:
        """The stored audit entries with ``where``'s values, oldest first."""
        rows = await self.sql("SELECT canonical FROM audit_entries ORDER BY id")
        found = [json.loads(canonical) for (canonical,) in rows]
        return [e for e in found if all(e.get(key) == value for key, value in where.items())]

    async def check_audit(self) -> None:
        """Every entry of a refused request is a refusal, and, once the server's sequencer
        has taken every entry into the tree and signed a checkpoint of it, the log verifies."""
        for entry in await self.entries():
            if entry["status"] >= 400:
                assert entry["decision"] == "deny", entry
        deadline = time.monotonic() + 30
        unsequenced = "SELECT count(*) FROM audit_entries WHERE id NOT IN (SELECT entry_id FROM audit_leaves)"
        # The sequencer signs a checkpoint up to a second after the leaves it covers.
        unsigned = (
            "SELECT count(*) FROM audit_leaves"
            " WHERE leaf_index >= (SELECT coalesce(max(tree_size), 0) FROM audit_checkpoints)"
        )
        while time.monotonic() < deadline and (
            (await self.sql(unsequenced))[0][0] or (await self.sql(unsigned))[0][0]
        ):
            await asyncio.sleep(0.1)
        key = await self.http.get("/v1/audit/verifier-key", headers=self.h("auditor"))
        assert key.status_code == 200, key.text
        # As `tellonce audit verify` checks the database: every leaf, column and checkpoint.
        size, _checkpoints = await verify_stored_log(
            self.database.engine.connect, NoteVerifier.parse(key.text)
        )
        assert size > 0


@pytest.fixture(scope="module")
async def world(
    database_url: str, root_key: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    """One server for the module, on a fresh database with the records tests' agreements,
    one to subscribe to address changes and one consent-based."""
    url = await create_scratch_database(database_url)
    folder = tmp_path_factory.mktemp("races")
    (folder / "data").mkdir()
    env = server_env(url, folder / "data", root_key)
    database = Database(Settings(env="test", database_url=url, data_dir=folder / "data", root_key=root_key))  # type: ignore[arg-type]
    try:
        apply_policies(url, RECORDS_POLICIES)
        clients = await create_clients(database, CLIENTS)
        server = start_server(env, folder / "server.log")
        try:
            limits = httpx.Limits(max_connections=N * 5)
            async with httpx.AsyncClient(base_url=server.base_url, timeout=60, limits=limits) as http:
                bearer = {}
                for name, (client_id, secret) in clients.items():
                    token = await http.post(
                        "/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
                    )
                    assert token.status_code == 200, token.text
                    bearer[name] = {"Authorization": f"Bearer {token.json()['access_token']}"}
                world = World(server, http, bearer, database)
                for who, agreement in (("owner0", HEARS_MOVES), ("welfare-owner", CONSENTED)):
                    made = await http.post(
                        "/v1/policies", json={**agreement, "reason": "races"}, headers=world.h(who)
                    )
                    assert made.status_code == 201, made.text
                yield world
        finally:
            server.stop()
    finally:
        await database.dispose()
        await drop_scratch_database(url)


def no_500(answers: list[httpx.Response]) -> None:
    """No answer is a server error, and every refusal is problem+json."""
    for answer in answers:
        assert answer.status_code < 500, answer.text
        if answer.status_code >= 400:
            assert answer.headers["content-type"].startswith(PROBLEM), answer.text


class TestCitizenWrites:
    async def test_writes_without_if_match_all_land_once_with_one_event_each(self, world: World) -> None:
        for _round in range(3):
            citizen_id = await world.register(address="Start")
            answers = await asyncio.gather(
                *(
                    world.http.patch(
                        f"/v1/citizens/{citizen_id}/fields",
                        json={"fields": {"address": f"Writer {n}"}, "reason": "race"},
                        headers=world.h("writer"),
                    )
                    for n in range(N)
                )
            )
            no_500(answers)
            assert [a.status_code for a in answers] == [200] * N
            # Every write has its own version: 2 to N + 1, each once.
            assert sorted(int(a.headers["etag"].strip('"')) for a in answers) == list(range(2, N + 2))
            history = await world.http.get(
                f"/v1/citizens/{citizen_id}/fields/address/history",
                params={"purpose": "fraud-investigation", "limit": 100},
                headers=world.h("welfare", **{"X-Case-Ref": "FRAUD-1"}),
            )
            assert history.status_code == 200, history.text
            items = history.json()["items"]
            assert sorted(i["version"] for i in items) == list(range(1, N + 2))
            assert sorted(i["value"] for i in items) == sorted(["Start", *(f"Writer {n}" for n in range(N))])
            events = await world.sql("SELECT count(*) FROM event_outbox WHERE citizen_id = :c", c=citizen_id)
            writes = await world.entries(action="write", citizen_id=citizen_id)
            assert (events[0][0], len(writes)) == (N, N)  # a registration has no event
            assert {(e["status"], e["decision"]) for e in writes} == {(200, "permit")}
        await world.check_audit()

    async def test_reads_racing_an_erasure_see_nothing_once_it_is_acknowledged(self, world: World) -> None:
        for _round in range(3):
            citizen_id = await world.register(address="Start", given_name="Ada")
            url = f"/v1/citizens/{citizen_id}"
            erasure, readers = await asyncio.gather(
                _erase(world, url), asyncio.gather(*(_reads(world, url) for _ in range(4)))
            )
            erased, acknowledged = erasure
            assert erased.status_code == 204, erased.text
            for sent, answer in (pair for reader in readers for pair in reader):
                no_500([answer])
                assert answer.status_code in (200, 410), answer.text
                if sent > acknowledged:
                    assert answer.status_code == 410, answer.text
        await world.check_audit()


async def _erase(world: World, url: str) -> tuple[httpx.Response, float]:
    """The erasure's answer, and when it arrived."""
    answer = await world.http.delete(url, params=ERASURE, headers=world.h("registrar"))
    return answer, time.monotonic()


async def _reads(world: World, url: str) -> list[tuple[float, httpx.Response]]:
    """Reads one after another, each with when it was sent."""
    made = []
    params = {"fields": "address,given_name", "purpose": "benefit-eligibility"}
    for _ in range(15):
        sent = time.monotonic()
        made.append((sent, await world.http.get(url, params=params, headers=world.h("welfare"))))
    return made


class TestRegistration:
    async def test_one_national_id_registered_at_once_is_stored_once(self, world: World) -> None:
        for _round in range(3):
            national_id = f"NI{uuid.uuid4().hex[:10].upper()}"
            before = len(await world.entries(action="register"))
            answers = await asyncio.gather(
                *(
                    world.http.post(
                        "/v1/citizens",
                        json={"national_id": national_id, "fields": {"given_name": f"Twin {n}"}},
                        headers=world.h("registrar"),
                    )
                    for n in range(N)
                )
            )
            no_500(answers)
            assert sorted(a.status_code for a in answers) == [201] + [409] * (N - 1)
            assert all(national_id not in a.text for a in answers)
            winner = next(a.json()["id"] for a in answers if a.status_code == 201)
            found = await world.http.post(
                "/v1/citizens/lookup",
                json={"national_id": national_id, "purpose": "benefit-eligibility"},
                headers=world.h("welfare"),
            )
            assert found.json()["id"] == winner, found.text
            registered = (await world.entries(action="register"))[before:]
            assert sorted((e["status"], e["decision"]) for e in registered) == [(201, "permit")] + [
                (409, "deny")
            ] * (N - 1)
        await world.check_audit()


async def _agreement(world: World, agreement_id: str) -> tuple[dict[str, Any], str]:
    got = await world.http.get(f"/v1/policies/{agreement_id}", headers=world.h("owner0"))
    assert got.status_code == 200, got.text
    return got.json(), got.headers["etag"]


def _replacement(agreement: dict[str, Any], reason: str) -> dict[str, Any]:
    kept = ("id", "consumer", "fields", "actions", "purposes", "legal_basis")
    return {**{key: agreement[key] for key in kept}, "reason": reason}


async def _versions(world: World, agreement_id: str) -> list[tuple[int, str]]:
    listed = await world.http.get(f"/v1/policies/{agreement_id}/versions", headers=world.h("owner0"))
    return [(v["version"], v["status"]) for v in listed.json()["items"]]


class TestAgreementChanges:
    async def test_replacements_from_one_version_one_wins(self, world: World) -> None:
        url = "/v1/policies/welfare-reads-identity"
        for round_ in range(3):
            current, tag = await _agreement(world, "welfare-reads-identity")
            answers = await asyncio.gather(
                *(
                    world.http.put(
                        url,
                        json=_replacement(current, f"owner {n}"),
                        headers=world.h(f"owner{n % OWNERS}", **{"If-Match": tag}),
                    )
                    for n in range(10)
                )
            )
            no_500(answers)
            assert sorted(a.status_code for a in answers) == [200] + [412] * 9
            assert len(await _versions(world, "welfare-reads-identity")) == round_ + 2
        changes = await world.entries(action="policy-change")
        assert {(e["status"], e["decision"]) for e in changes} == {(200, "permit")}
        await world.check_audit()

    async def test_revocations_sent_together_answer_as_one_after_another(self, world: World) -> None:
        """One revokes; each other finds it revoked (409, as a revocation sent after it is),
        never 412: none of them stated a precondition."""
        agreement_id = "welfare-verifies-age"
        url = f"/v1/policies/{agreement_id}"
        for _round in range(3):
            before = len(await world.entries(action="policy-change"))
            answers = await asyncio.gather(
                *(
                    world.http.delete(url, params={"reason": "stop"}, headers=world.h(f"owner{n % OWNERS}"))
                    for n in range(N)
                )
            )
            no_500(answers)
            assert sorted(a.status_code for a in answers) == [200] + [409] * (N - 1), [
                a.text for a in answers
            ]
            assert {a.json()["title"] for a in answers if a.status_code == 409} == {
                "Agreement already revoked"
            }
            assert len(await world.entries(action="policy-change")) == before + 1
            current, tag = await _agreement(world, agreement_id)
            back = await world.http.put(
                url, json=_replacement(current, "back"), headers=world.h("owner0", **{"If-Match": tag})
            )
            assert back.status_code == 200, back.text
        statuses = [status for _version, status in await _versions(world, agreement_id)]
        assert statuses == ["active"] + ["revoked", "active"] * 3
        await world.check_audit()

    async def test_a_revocation_racing_a_replacement_revokes_whichever_is_current(self, world: World) -> None:
        """Without If-Match a revocation names no version: it revokes the agreement whether
        the replacement committed before it or not, and the replacement is 200 or 412."""
        agreement_id = "welfare-looks-up"
        url = f"/v1/policies/{agreement_id}"
        for _round in range(3):
            current, tag = await _agreement(world, agreement_id)
            revoked, *replaced = await asyncio.gather(
                world.http.delete(url, params={"reason": "stop"}, headers=world.h("owner1")),
                *(
                    world.http.put(
                        url,
                        json=_replacement(current, "renew"),
                        headers=world.h("owner2", **{"If-Match": tag}),
                    )
                    for _ in range(4)
                ),
            )
            assert revoked.status_code == 200, revoked.text
            no_500(replaced)
            assert sorted(a.status_code for a in replaced) in ([412] * 4, [200] + [412] * 3)
            current, tag = await _agreement(world, agreement_id)
            assert current["status"] == "revoked"
            back = await world.http.put(
                url, json=_replacement(current, "back"), headers=world.h("owner0", **{"If-Match": tag})
            )
            assert back.status_code == 200, back.text
        await world.check_audit()


class TestConsentChanges:
    async def test_changes_sent_together_answer_as_one_after_another(self, world: World) -> None:
        """Revocations sent together all answer revoked (asking a revoked consent to be
        revoked changes nothing, 200), with one change made, evented and audited; a resume
        or pause that loses to a revocation is 409 final."""
        citizen_id = await world.register(given_name="Ada")
        consents = f"/v1/citizens/{citizen_id}/consents"
        for _round in range(3):
            given = await world.http.post(
                consents, json={"agreement": CONSENTED["id"]}, headers=world.h("portal")
            )
            assert given.status_code == 201, given.text
            consent = f"{consents}/{given.json()['id']}"
            before = len(await world.entries(action="consent-change", citizen_id=citizen_id))
            revoked = await asyncio.gather(
                *(
                    world.http.patch(consent, json={"status": "revoked"}, headers=world.h("portal"))
                    for _ in range(N)
                )
            )
            no_500(revoked)
            assert [a.status_code for a in revoked] == [200] * N, [a.text for a in revoked]
            assert {a.json()["status"] for a in revoked} == {"revoked"}
            changes = (await world.entries(action="consent-change", citizen_id=citizen_id))[before:]
            assert [(e["status"], e["decision"]) for e in changes] == [(200, "permit")]
            events = await world.sql(
                "SELECT count(*) FROM event_outbox WHERE citizen_id = :c AND type = 'consent.changed'",
                c=citizen_id,
            )
            assert events[0][0] == 2 * (_round + 1)  # each round's grant and its one revocation
            late = await asyncio.gather(
                *(
                    world.http.patch(consent, json={"status": status}, headers=world.h("portal"))
                    for status in ("active", "paused") * 3
                )
            )
            assert {(a.status_code, a.json()["title"]) for a in late} == {
                (409, "The consent can no longer change")
            }
        await world.check_audit()


class TestSubscriptions:
    async def test_deletions_sent_together_delete_once(self, world: World) -> None:
        body = {"fields": ["address"], "purpose": "benefit-eligibility"}
        for _round in range(3):
            made = await world.http.post("/v1/subscriptions", json=body, headers=world.h("welfare"))
            assert made.status_code == 201, made.text
            url = f"/v1/subscriptions/{made.json()['id']}"
            answers = await asyncio.gather(
                *(world.http.delete(url, headers=world.h("welfare")) for _ in range(10))
            )
            no_500(answers)
            assert sorted(a.status_code for a in answers) == [204] + [404] * 9
        await world.check_audit()
