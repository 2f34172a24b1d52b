"""Access notices and delayed disclosure, through the real app: reads by departments, the
audit log, the notice worker, the outbox, signed webhooks to a receiver on 127.0.0.1, the
feed, the citizen's access log, an auditor's search, and closing a case."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, event, func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks import Webhook

from service.app import create_app
from service.audit import repository as audit_repository
from service.audit import writer as audit_writer
from service.audit.checkpoint import NoteVerifier
from service.audit.models import AuditEntryRow
from service.audit.service import verify_stored_log
from service.cases.models import Case
from service.config import Settings
from service.db import utcnow
from service.events import repository as events_repository
from service.events.models import ACCESS_RECORDED, HeldNotice, NoticeState, OutboxEvent
from service.events.notices import NoticeWorker
from tests.audit import test_spec_verifier as spec
from tests.events.conftest import occurred_at
from tests.fixtures import rfc9162
from tests.fixtures.auth import act_as
from tests.fixtures.webhooks import WebhookReceiver, stamped_at

PROBLEM = "application/problem+json"
# Plaintext the tests register; no notice may carry any of it (nor a national id).
SECRETS = ["Ada", "Bea", "7 Hidden Row", "9 Quiet Close", "1961-04-02"]


@pytest.fixture
async def full_app(events_settings: Settings, events_engine: AsyncEngine) -> AsyncIterator[FastAPI]:
    async with events_engine.begin() as conn:
        await conn.execute(delete(HeldNotice))
        await conn.execute(delete(Case))
        # Accesses of earlier tests are not told: the worker starts after the newest entry.
        newest = (await conn.execute(select(func.max(AuditEntryRow.id)))).scalar() or 0
        await conn.execute(update(NoticeState).values(last_entry_id=newest))
    application = create_app(events_settings.model_copy(update={"run_workers": True}))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def http(full_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=full_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def _problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert str(body["type"]).endswith("/" + slug)
    return body


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _national_id() -> str:
    """A national id no other test has registered in this database, added to ``SECRETS``."""
    made = f"QQ{uuid.uuid4().int % 10**6:06d}A"
    SECRETS.append(made)
    return made


async def _register(app: FastAPI, http: httpx.AsyncClient, national_id: str, name: str, address: str) -> str:
    act_as(app, "register", "registrar")
    response = await http.post(
        "/v1/citizens",
        json={
            "national_id": national_id,
            "fields": {"given_name": name, "address": address, "date_of_birth": "1961-04-02"},
        },
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def _read(
    app: FastAPI,
    http: httpx.AsyncClient,
    department: str,
    citizen: str,
    purpose: str,
    case_ref: str | None = None,
) -> httpx.Response:
    act_as(app, department, "consumer")
    headers = {"X-Case-Ref": case_ref} if case_ref else {}
    return await http.get(
        f"/v1/citizens/{citizen}",
        params={"fields": "address,given_name", "purpose": purpose},
        headers=headers,
    )


async def _access_log(app: FastAPI, http: httpx.AsyncClient, citizen: str) -> list[dict[str, Any]]:
    act_as(app, "portal", "citizen-portal")
    response = await http.get(f"/v1/citizens/{citizen}/access-log", params={"proofs": "true"})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return [item for item in items if item["action"] == "read"]


async def _notices(receiver: WebhookReceiver, secret: str, count: int) -> list[dict[str, Any]]:
    """The first ``count`` notices the receiver got, each checked against its signature."""
    received = await receiver.until(count)
    return [Webhook(secret).verify(r.body, r.headers) for r in received]


async def _subscribe_portal(app: FastAPI, http: httpx.AsyncClient, receiver: WebhookReceiver) -> str:
    act_as(app, "portal", "citizen-portal")
    response = await http.post(
        "/v1/subscriptions", json={"type": ACCESS_RECORDED, "webhook_url": receiver.url}
    )
    assert response.status_code == 201, response.text
    assert response.json()["type"] == ACCESS_RECORDED
    return str(response.json()["secret"])


async def _until(check: Any, timeout: float = 10.0) -> Any:
    """Poll ``check`` (async, returns a value or None) until it returns something."""
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


async def _notice_rows(engine: AsyncEngine, citizens: list[str]) -> int:
    async with engine.connect() as conn:
        count = await conn.execute(
            select(func.count())
            .select_from(OutboxEvent)
            .where(OutboxEvent.type == ACCESS_RECORDED, OutboxEvent.citizen_id.in_(citizens))
        )
        return int(count.scalar_one())


class TestAccessNotices:
    async def test_each_release_is_told_once_signed_and_without_values(
        self,
        full_app: FastAPI,
        http: httpx.AsyncClient,
        receiver: WebhookReceiver,
        events_engine: AsyncEngine,
    ) -> None:
        secret = await _subscribe_portal(full_app, http, receiver)
        nid_a = _national_id()
        ada = await _register(full_app, http, nid_a, "Ada", "7 Hidden Row")
        nid_b = _national_id()
        bea = await _register(full_app, http, nid_b, "Bea", "9 Quiet Close")
        assert (await _read(full_app, http, "welfare", ada, "benefit-eligibility")).status_code == 200
        act_as(full_app, "welfare", "consumer")
        batch = await http.post(
            "/v1/citizens/batch-get",
            json={"ids": [ada, bea], "fields": ["address"], "purpose": "benefit-eligibility"},
        )
        assert batch.status_code == 200, batch.text
        lookup = await http.post(
            "/v1/citizens/lookup", json={"national_id": nid_b, "purpose": "benefit-eligibility"}
        )
        assert lookup.status_code == 200, lookup.text
        verify = await http.post(
            f"/v1/citizens/{bea}/verify",
            json={"purpose": "benefit-eligibility", "claims": {"date_of_birth": {"lte": "2000-01-01"}}},
        )
        assert verify.status_code == 200, verify.text
        # A refused read releases nothing and tells nothing.
        refused = await _read(full_app, http, "welfare", ada, "tax-administration")
        assert refused.status_code in (403, 404, 422), refused.text

        # Five accesses released data: a read, two batch-get items, a lookup, a verification.
        payloads = await _notices(receiver, secret, 5)
        notices = [p["data"] for p in payloads if p["data"]["citizen_id"] in (ada, bea)]
        assert sorted((n["citizen_id"] == ada, n["action"]) for n in notices) == sorted(
            [(True, "read"), (True, "batch-get"), (False, "batch-get"), (False, "lookup"), (False, "verify")]
        )
        assert {p["type"] for p in payloads} == {ACCESS_RECORDED}
        # Each body's timestamp is when its access occurred, as the outbox notice has it.
        for payload in payloads:
            assert stamped_at(payload) == await occurred_at(events_engine, payload["data"]["event_id"])
        read_notice = next(n for n in notices if n["action"] == "read")
        assert read_notice["department"] == "welfare"
        assert read_notice["fields"] == ["address", "given_name"]
        assert read_notice["purpose"] == "benefit-eligibility"
        assert read_notice["basis"] == "statutory"
        assert read_notice["legal_basis"] == ["Social Security Administration Act 1992, s.122"]
        assert read_notice["disclosed_at"] is None
        for received in receiver.received:
            body = received.body.decode()
            assert not [value for value in SECRETS if value in body], body
        # Once per access: one outbox notice each, one delivery each, distinct webhook ids.
        assert await _notice_rows(events_engine, [ada, bea]) == 5
        assert len({r.headers["webhook-id"] for r in receiver.received}) == len(receiver.received)
        # Each delivery is audited as the portal reading a line of the citizen's access log.
        async with events_engine.connect() as conn:
            rows = await conn.execute(
                select(AuditEntryRow.canonical).where(
                    AuditEntryRow.action == "access-log", AuditEntryRow.department == "portal"
                )
            )
            told = [json.loads(c)["citizen_id"] for c in rows.scalars()]
        assert told.count(ada) >= 2
        assert told.count(bea) >= 3

    async def test_a_notice_the_portal_failed_is_retried_as_the_same_message(
        self,
        full_app: FastAPI,
        http: httpx.AsyncClient,
        receiver: WebhookReceiver,
        events_engine: AsyncEngine,
    ) -> None:
        """The retry is the same signed message (one ``webhook-id``), made from the one
        notice in the outbox; the access stays one line of the citizen's access log."""
        runtime = full_app.state.events
        runtime.settings = runtime.settings.model_copy(update={"webhook_retry_base_seconds": 0.05})
        secret = await _subscribe_portal(full_app, http, receiver)
        ada = await _register(full_app, http, _national_id(), "Ada", "7 Hidden Row")
        receiver.fail_next(1, status=500)
        assert (await _read(full_app, http, "welfare", ada, "benefit-eligibility")).status_code == 200
        [told] = await _notices(receiver, secret, 1)
        assert (told["data"]["citizen_id"], told["data"]["action"]) == (ada, "read")
        failed, delivered = receiver.received[:2]
        assert (failed.answered, delivered.answered) == (500, 204)
        assert failed.headers["webhook-id"] == delivered.headers["webhook-id"]
        assert Webhook(secret).verify(failed.body, failed.headers) == told
        assert stamped_at(json.loads(failed.body)) == stamped_at(told)
        assert stamped_at(told) == await occurred_at(events_engine, told["data"]["event_id"])
        assert await _notice_rows(events_engine, [ada]) == 1
        assert [item["department"] for item in await _access_log(full_app, http, ada)] == ["welfare"]

    async def test_workers_racing_over_the_same_entries_tell_each_access_once(
        self, full_app: FastAPI, http: httpx.AsyncClient, events_engine: AsyncEngine
    ) -> None:
        act_as(full_app, "portal", "citizen-portal")
        subscribed = await http.post("/v1/subscriptions", json={"type": ACCESS_RECORDED})
        assert subscribed.status_code == 201, subscribed.text
        ada = await _register(full_app, http, _national_id(), "Ada", "7 Hidden Row")
        # Two more workers beside the app's own, each making its notices before it takes
        # the lock: whichever stores first wins, the others find the position moved.
        others = [NoticeWorker(events_engine, full_app.state.events.terms, interval=0) for _ in range(2)]
        stop = asyncio.Event()

        async def race(worker: NoticeWorker) -> None:
            while not stop.is_set():
                await worker.run_once(datetime.now(UTC))
                await asyncio.sleep(0)

        racers = [asyncio.create_task(race(worker)) for worker in others]
        try:
            for _ in range(12):
                assert (await _read(full_app, http, "welfare", ada, "benefit-eligibility")).status_code == 200

            async def all_told() -> bool:
                return await _notice_rows(events_engine, [ada]) >= 12

            assert await _until(all_told)
            await asyncio.sleep(0.5)  # rounds still running may only find nothing left
        finally:
            stop.set()
            await asyncio.gather(*racers)
        assert await _notice_rows(events_engine, [ada]) == 12

    async def test_with_no_portal_subscribed_the_position_moves_in_one_statement(
        self,
        full_app: FastAPI,
        http: httpx.AsyncClient,
        events_engine: AsyncEngine,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Reads with nobody subscribed make no notice; a round moves the worker's position
        past them in one conditional UPDATE (on SQLite it holds the write lock the audit
        writers wait for), never the round's transaction that locks the row first."""

        async def idle(_now: datetime) -> int:
            return 0

        # The app's own worker sits out, so the round below is the one that moves it.
        monkeypatch.setattr(full_app.state.dispatcher.notices, "run_once", idle)
        async with events_engine.connect() as conn:
            start = await events_repository.notice_position(conn)
        ada = await _register(full_app, http, _national_id(), "Ada", "7 Hidden Row")
        for _ in range(3):
            assert (await _read(full_app, http, "welfare", ada, "benefit-eligibility")).status_code == 200
        async with events_engine.connect() as conn:
            newest = (await conn.execute(select(func.max(AuditEntryRow.id)))).scalar_one()
        assert start < newest

        async def sequenced() -> bool:
            async with events_engine.connect() as conn:
                return await audit_repository.sequenced_watermark(conn) >= newest

        assert await _until(sequenced)
        worker = NoticeWorker(events_engine, full_app.state.events.terms, interval=0)
        statements: list[str] = []

        def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            statements.append(statement)

        event.listen(events_engine.sync_engine, "before_cursor_execute", seen)
        try:
            assert await worker.run_once(datetime.now(UTC)) == 0
        finally:
            event.remove(events_engine.sync_engine, "before_cursor_execute", seen)
        async with events_engine.connect() as conn:
            position = await events_repository.notice_position(conn)
        assert await _notice_rows(events_engine, [ada]) == 0
        writes = [s for s in statements if s.lstrip().upper().startswith(("UPDATE", "INSERT", "DELETE"))]
        assert len(writes) == 1, statements
        assert "RETURNING" not in writes[0]
        assert position >= newest

    async def test_a_position_another_worker_moved_on_is_not_moved_back(
        self, full_app: FastAPI, events_engine: AsyncEngine
    ) -> None:
        autocommit = events_engine.execution_options(isolation_level="AUTOCOMMIT")
        async with events_engine.connect() as conn:
            start = await events_repository.notice_position(conn)
        assert await events_repository.advance_notice_position(autocommit, start, start + 50)
        # A worker that read the old position finds it moved and writes nothing.
        assert not await events_repository.advance_notice_position(autocommit, start, start + 20)
        async with events_engine.connect() as conn:
            assert await events_repository.notice_position(conn) == start + 50

    async def test_the_feed_carries_notices_and_consumers_cannot_subscribe(
        self, full_app: FastAPI, http: httpx.AsyncClient
    ) -> None:
        act_as(full_app, "welfare", "consumer")
        refused = await http.post("/v1/subscriptions", json={"type": ACCESS_RECORDED})
        _problem(refused, 403, "forbidden")
        bad = await http.post("/v1/subscriptions", json={"type": ACCESS_RECORDED, "fields": ["address"]})
        _problem(bad, 422, "validation-failed")
        act_as(full_app, "portal", "citizen-portal")
        made = await http.post("/v1/subscriptions", json={"type": ACCESS_RECORDED})
        assert made.status_code == 201, made.text
        cursor = (await http.get("/v1/events")).json()["cursor"]
        nid_a = _national_id()
        ada = await _register(full_app, http, nid_a, "Ada", "7 Hidden Row")
        assert (await _read(full_app, http, "welfare", ada, "benefit-eligibility")).status_code == 200
        act_as(full_app, "portal", "citizen-portal")

        async def told() -> list[dict[str, Any]]:
            page = (await http.get("/v1/events", params={"after": cursor, "wait": 1})).json()
            return [item for item in page["items"] if item["citizen_id"] == ada]

        [notice] = await _until(told)
        assert notice["type"] == ACCESS_RECORDED
        # Another client of the portal's department, without the portal's role, is told nothing.
        act_as(full_app, "portal", "consumer")
        page = (await http.get("/v1/events", params={"after": cursor})).json()
        assert [item for item in page["items"] if item["citizen_id"] == ada] == []
        assert (notice["department"], notice["action"]) == ("welfare", "read")
        assert not [value for value in SECRETS if value in json.dumps(notice)]


class TestDelayedDisclosure:
    async def test_held_from_the_citizen_until_the_case_closes_then_shown_with_its_time(
        self,
        full_app: FastAPI,
        http: httpx.AsyncClient,
        receiver: WebhookReceiver,
        events_engine: AsyncEngine,
    ) -> None:
        secret = await _subscribe_portal(full_app, http, receiver)
        nid_a = _national_id()
        ada = await _register(full_app, http, nid_a, "Ada", "7 Hidden Row")
        # Without a case reference the agreement cannot be used: 422, naming the header.
        missing = await _read(full_app, http, "revenue", ada, "fraud-investigation")
        problem = _problem(missing, 422, "case-ref-required")
        assert problem["errors"] == [{"loc": ["header", "X-Case-Ref"], "msg": "a case reference is required"}]
        covert = await _read(full_app, http, "revenue", ada, "fraud-investigation", case_ref="FRAUD-7")
        assert covert.status_code == 200, covert.text
        # An ordinary read after it: once its notice arrives, the worker has passed both.
        assert (await _read(full_app, http, "welfare", ada, "benefit-eligibility")).status_code == 200
        [first] = await _notices(receiver, secret, 1)
        assert first["data"]["department"] == "welfare"
        assert [item["department"] for item in await _access_log(full_app, http, ada)] == ["welfare"]
        async with events_engine.connect() as conn:
            held = (await conn.execute(select(func.count()).select_from(HeldNotice))).scalar_one()
        assert held == 1

        # The auditor sees it at once, case reference and all.
        act_as(full_app, "audit-office", "auditor")
        found = await http.get("/v1/audit/entries", params={"citizen_id": ada, "consumer": "revenue"})
        assert found.status_code == 200, found.text
        refusal, entry = [i["entry"] for i in found.json()["items"] if i["entry"]["action"] == "read"]
        assert (refusal["status"], refusal["case_ref"]) == (422, None)
        assert (entry["status"], entry["case_ref"]) == (200, "FRAUD-7")
        accessed_at = entry["time"]

        # Another department cannot close it (a reference is its department's own) ...
        act_as(full_app, "welfare", "consumer")
        _problem(await http.post("/v1/cases/FRAUD-7/close"), 404, "case-not-found")
        assert len(await _access_log(full_app, http, ada)) == 1
        # ... revenue can.
        act_as(full_app, "revenue", "consumer")
        closed = await http.post("/v1/cases/FRAUD-7/close")
        assert closed.status_code == 200, closed.text
        assert closed.json()["closed_at"] is not None

        [_first, disclosed] = await _notices(receiver, secret, 2)
        data = disclosed["data"]
        assert (data["department"], data["disclosed_by"]) == ("revenue", "case-closed")
        assert _instant(data["occurred_at"]) == _instant(accessed_at)
        assert data["disclosed_at"] is not None
        # Told when the access occurred, not when it was disclosed.
        assert stamped_at(disclosed) == _instant(accessed_at) < _instant(data["disclosed_at"])
        log = await _access_log(full_app, http, ada)
        # The access under the case; not the refusal without one, which no closing covers.
        shown = [item for item in log if item["department"] == "revenue"]
        assert len(shown) == 1
        assert shown[0]["time"] == accessed_at
        assert shown[0]["disclosed_by"] == "case-closed"
        # Its proof still verifies against the tree, like every other line's.
        assert all(item["proof"] is None or item["proof"]["entry"]["time"] == item["time"] for item in log)
        assert await _notice_rows(events_engine, [ada]) == 2
        # The closing is in the log.
        act_as(full_app, "audit-office", "auditor")
        closings = (await http.get("/v1/audit/entries", params={"action": "case-close"})).json()["items"]
        assert [(c["entry"]["department"], c["entry"]["status"]) for c in closings][-2:] == [
            ("welfare", 404),
            ("revenue", 200),
        ]

    async def test_shown_once_the_maximum_delay_passes_and_the_log_still_verifies(
        self,
        full_app: FastAPI,
        http: httpx.AsyncClient,
        receiver: WebhookReceiver,
        events_engine: AsyncEngine,
    ) -> None:
        secret = await _subscribe_portal(full_app, http, receiver)
        nid_a = _national_id()
        ada = await _register(full_app, http, nid_a, "Ada", "7 Hidden Row")
        covert = await _read(full_app, http, "revenue", ada, "fraud-investigation", case_ref="FRAUD-8")
        assert covert.status_code == 200, covert.text
        assert (await _read(full_app, http, "welfare", ada, "benefit-eligibility")).status_code == 200
        await _notices(receiver, secret, 1)
        assert [item["department"] for item in await _access_log(full_app, http, ada)] == ["welfare"]

        # 30 days (the agreement's max_delay) and a minute later, without the case closed.
        later = utcnow() + timedelta(days=30, minutes=1)
        full_app.state.clock = lambda: later
        log = await _access_log(full_app, http, ada)
        [shown] = [item for item in log if item["department"] == "revenue"]
        assert shown["disclosed_by"] == "max-delay"
        [_first, disclosed] = await _notices(receiver, secret, 2)
        assert disclosed["data"]["disclosed_by"] == "max-delay"
        assert _instant(disclosed["data"]["occurred_at"]) == _instant(shown["time"])

        async def sequenced() -> bool:
            return bool((await _access_log(full_app, http, ada))[-1]["proof"])

        assert await _until(sequenced)
        # Every line's proof checks, as RFC 9162 writes it, against the signed checkpoint the
        # page returns: the disclosed line's as well, and none of it came from the service's
        # Merkle code; a line the checkpoint does not cover yet is null.
        act_as(full_app, "portal", "citizen-portal")
        page = (await http.get(f"/v1/citizens/{ada}/access-log", params={"proofs": "true"})).json()
        log_key = spec.parse_vkey_text(full_app.state.audit_signer.verifier_key())
        checkpoint = spec.parse_checkpoint_text(spec.verified_text(page["checkpoint"], log_key))
        proven = 0
        for item in page["items"]:
            proof = item["proof"]
            if proof is None:
                continue
            assert proof["tree_size"] == checkpoint.size
            entry = proof["entry"]
            assert (entry["time"], entry["department"], entry["citizen_id"]) == (
                item["time"],
                item["department"],
                ada,
            )
            leaf = rfc9162.leaf_hash(spec.canonical(proof["entry"]))
            assert base64.b64decode(proof["leaf_hash"]) == leaf
            path = [base64.b64decode(h) for h in proof["hashes"]]
            assert rfc9162.verify_inclusion(proof["leaf_index"], checkpoint.size, leaf, path, checkpoint.root)
            proven += 1
        assert proven >= 3  # the registration, the ordinary read and the disclosed one
        size, _checkpoints = await verify_stored_log(
            events_engine.connect, NoteVerifier.parse(full_app.state.audit_signer.verifier_key())
        )
        assert size > 0

    async def test_a_refused_attempt_under_a_case_is_held_like_an_access(
        self, full_app: FastAPI, http: httpx.AsyncClient
    ) -> None:
        ada = await _register(full_app, http, _national_id(), "Ada", "7 Hidden Row")
        # Revenue asks under a case for a purpose its delayed agreement does not name: refused,
        # and the refusal must not show the citizen the investigation before its access would.
        refused = await _read(full_app, http, "revenue", ada, "tax-administration", case_ref="FRAUD-9")
        assert refused.status_code in (403, 404), refused.text
        assert [item["department"] for item in await _access_log(full_app, http, ada)] == []

        act_as(full_app, "audit-office", "auditor")
        found = await http.get("/v1/audit/entries", params={"citizen_id": ada, "consumer": "revenue"})
        [entry] = [i["entry"] for i in found.json()["items"] if i["entry"]["action"] == "read"]
        assert (entry["case_ref"], entry["fields_released"]) == ("FRAUD-9", [])
        assert {r["agreement"] for r in entry["reasons"]} == {"fraud-reads-for-revenue"}
        assert all(r["effect"] == "deny" for r in entry["reasons"])

        # Shown once the agreement's maximum delay has passed, as an access under it would be.
        later = utcnow() + timedelta(days=30, minutes=1)
        full_app.state.clock = lambda: later
        [shown] = [item for item in await _access_log(full_app, http, ada) if item["department"] == "revenue"]
        assert shown["disclosed_by"] == "max-delay"
        assert shown["time"] == entry["time"]

    async def test_shown_exactly_at_the_maximum_delay_and_at_once_under_a_case_already_closed(
        self,
        full_app: FastAPI,
        http: httpx.AsyncClient,
        receiver: WebhookReceiver,
    ) -> None:
        secret = await _subscribe_portal(full_app, http, receiver)
        ada = await _register(full_app, http, _national_id(), "Ada", "7 Hidden Row")
        covert = await _read(full_app, http, "revenue", ada, "fraud-investigation", case_ref="FRAUD-10")
        assert covert.status_code == 200, covert.text
        act_as(full_app, "audit-office", "auditor")
        found = await http.get("/v1/audit/entries", params={"citizen_id": ada, "consumer": "revenue"})
        [accessed] = [_instant(i["entry"]["time"]) for i in found.json()["items"]]

        async def revenue_lines() -> list[dict[str, Any]]:
            return [
                item for item in await _access_log(full_app, http, ada) if item["department"] == "revenue"
            ]

        # The agreement's max_delay is 30 days: held until that instant, shown from it.
        full_app.state.clock = lambda: accessed + timedelta(days=30, microseconds=-1)
        assert await revenue_lines() == []
        full_app.state.clock = lambda: accessed + timedelta(days=30)
        [shown] = await revenue_lines()
        assert (shown["disclosed_by"], _instant(shown["disclosed_at"])) == (
            "max-delay",
            accessed + timedelta(days=30),
        )
        full_app.state.clock = utcnow

        # Closed, then used again: an access under a closed case is shown, and told, at once.
        act_as(full_app, "revenue", "consumer")
        assert (await http.post("/v1/cases/FRAUD-10/close")).status_code == 200
        # (The first access's notice went out at the maximum delay or at the closing,
        # whichever the worker saw first.)
        await _notices(receiver, secret, 1)
        again = await _read(full_app, http, "revenue", ada, "fraud-investigation", case_ref="FRAUD-10")
        assert again.status_code == 200, again.text
        first, second = await revenue_lines()
        assert (first["time"], first["disclosed_by"]) == (shown["time"], "case-closed")
        assert second["disclosed_by"] == "case-closed"
        assert second["disclosed_at"] == _instant(second["time"]).isoformat()
        [_first, told] = await _notices(receiver, secret, 2)
        assert (told["data"]["disclosed_by"], told["data"]["citizen_id"]) == ("case-closed", ada)
        assert _instant(told["data"]["occurred_at"]) == _instant(second["time"])

    async def test_a_delegated_write_under_a_case_is_held_until_its_department_closes_it(
        self, full_app: FastAPI, http: httpx.AsyncClient
    ) -> None:
        ada = await _register(full_app, http, _national_id(), "Ada", "7 Hidden Row")
        act_as(full_app, "revenue", "writer")
        written = await http.patch(
            f"/v1/citizens/{ada}/fields",
            json={
                "fields": {"address": "9 Quiet Close"},
                "reason": "fraud",
                "purpose": "fraud-investigation",
            },
            headers={"X-Case-Ref": "W-1"},
        )
        assert written.status_code == 200, written.text

        async def revenue_lines() -> list[dict[str, Any]]:
            act_as(full_app, "portal", "citizen-portal")
            response = await http.get(f"/v1/citizens/{ada}/access-log")
            assert response.status_code == 200, response.text
            return [item for item in response.json()["items"] if item["department"] == "revenue"]

        assert await revenue_lines() == []
        # The write opened the case, so its department can close it (it was 404).
        act_as(full_app, "revenue", "consumer")
        closed = await http.post("/v1/cases/W-1/close")
        assert closed.status_code == 200, closed.text
        [shown] = await revenue_lines()
        assert (shown["action"], shown["fields"], shown["disclosed_by"]) == (
            "write",
            ["address"],
            "case-closed",
        )

    async def test_one_reference_used_by_two_departments_is_two_cases(
        self, full_app: FastAPI, http: httpx.AsyncClient
    ) -> None:
        ada = await _register(full_app, http, _national_id(), "Ada", "7 Hidden Row")
        for department in ("revenue", "welfare"):
            act_as(full_app, department, "consumer")
            read = await http.get(
                f"/v1/citizens/{ada}",
                params={"fields": "address", "purpose": "fraud-investigation"},
                headers={"X-Case-Ref": "SHARED-1"},
            )
            assert read.status_code == 200, read.text

        async def shown() -> list[str]:
            act_as(full_app, "portal", "citizen-portal")
            response = await http.get(f"/v1/citizens/{ada}/access-log")
            assert response.status_code == 200, response.text
            return [
                i["department"] for i in response.json()["items"] if i["purpose"] == "fraud-investigation"
            ]

        assert await shown() == []
        # Revenue closing its SHARED-1 discloses its own access only.
        act_as(full_app, "revenue", "consumer")
        assert (await http.post("/v1/cases/SHARED-1/close")).status_code == 200
        assert await shown() == ["revenue"]
        act_as(full_app, "welfare", "consumer")
        assert (await http.post("/v1/cases/SHARED-1/close")).status_code == 200
        assert await shown() == ["revenue", "welfare"]

    async def test_a_closing_whose_entry_cannot_be_written_leaves_the_case_open(
        self,
        full_app: FastAPI,
        http: httpx.AsyncClient,
        events_engine: AsyncEngine,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The closing and its entry commit together: with the audit failing the answer is
        503 and the case stays open, so nothing held is disclosed without a trail."""
        ada = await _register(full_app, http, _national_id(), "Ada", "9 Held Row")
        act_as(full_app, "revenue", "consumer")
        read = await http.get(
            f"/v1/citizens/{ada}",
            params={"fields": "address", "purpose": "fraud-investigation"},
            headers={"X-Case-Ref": "KEPT-1"},
        )
        assert read.status_code == 200, read.text

        async def failing(*_args: Any, **_kwargs: Any) -> Any:
            raise OperationalError("INSERT INTO audit_entries", {}, Exception("disk full"))

        monkeypatch.setattr(audit_writer, "insert_values", failing)
        _problem(await http.post("/v1/cases/KEPT-1/close"), 503, "audit-unavailable")
        monkeypatch.undo()
        async with events_engine.connect() as conn:
            closed_at = (
                await conn.execute(
                    select(Case.closed_at).where(Case.department == "revenue", Case.case_ref == "KEPT-1")
                )
            ).scalar_one()
        assert closed_at is None
        act_as(full_app, "portal", "citizen-portal")
        log = (await http.get(f"/v1/citizens/{ada}/access-log")).json()["items"]
        assert [i for i in log if i["purpose"] == "fraud-investigation"] == []
        act_as(full_app, "revenue", "consumer")
        assert (await http.post("/v1/cases/KEPT-1/close")).status_code == 200

    async def test_closing_a_closed_case_answers_the_same_and_writes_no_second_closing(
        self, full_app: FastAPI, http: httpx.AsyncClient
    ) -> None:
        """A repeat closing, one after the other or two at once, changes nothing: the same
        answer (the first closing's time) and exactly one closing entry per case."""
        ada = await _register(full_app, http, _national_id(), "Ada", "7 Hidden Row")
        one_after, at_once = f"AGAIN-{uuid.uuid4().hex[:8]}", f"RACE-{uuid.uuid4().hex[:8]}"
        for case_ref in (one_after, at_once):
            read = await _read(full_app, http, "revenue", ada, "fraud-investigation", case_ref=case_ref)
            assert read.status_code == 200, read.text

        first = await http.post(f"/v1/cases/{one_after}/close")
        assert first.status_code == 200, first.text
        assert first.json()["closed_at"] is not None
        again = await http.post(f"/v1/cases/{one_after}/close")
        assert again.status_code == 200, again.text
        assert again.json() == first.json()

        racing = await asyncio.gather(*(http.post(f"/v1/cases/{at_once}/close") for _ in range(2)))
        assert [r.status_code for r in racing] == [200, 200], [r.text for r in racing]
        assert racing[0].json() == racing[1].json()

        # A refusal is still audited, every time.
        unknown = f"NEVER-{uuid.uuid4().hex[:8]}"
        for _ in range(2):
            _problem(await http.post(f"/v1/cases/{unknown}/close"), 404, "case-not-found")

        act_as(full_app, "audit-office", "auditor")
        found = await http.get("/v1/audit/entries", params={"action": "case-close", "limit": 1000})
        assert found.status_code == 200, found.text
        closings = [(i["entry"]["case_ref"], i["entry"]["status"]) for i in found.json()["items"]]
        assert sorted(c for c in closings if c[0] in (one_after, at_once, unknown)) == sorted(
            [(one_after, 200), (at_once, 200), (unknown, 404), (unknown, 404)]
        )
