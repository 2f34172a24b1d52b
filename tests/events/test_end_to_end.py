"""The whole path through the app: a PATCH by the owner, the outbox, the feed and a signed
webhook, with the real policy engine and the real audit trail."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from standardwebhooks import Webhook

from service.app import create_app
from service.audit.models import AuditEntryRow
from service.config import Settings
from service.events import repository
from service.events.models import Subscription
from service.events.service import EventsRuntime
from tests.events.conftest import LiveAgreements, add_citizen, emit, occurred_at
from tests.fixtures.auth import act_as
from tests.fixtures.webhooks import WebhookReceiver, stamped_at


@pytest.fixture
async def full_app(events_settings: Settings) -> AsyncIterator[FastAPI]:
    """The real app: auth overridden per call, everything else as in production, and the
    dispatcher running in-process."""
    application = create_app(events_settings.model_copy(update={"run_workers": True}))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def http(full_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=full_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def _register(app: FastAPI, http: httpx.AsyncClient, address: str) -> tuple[str, str]:
    act_as(app, "register", "registrar")
    response = await http.post(
        "/v1/citizens",
        json={
            "national_id": f"NI{abs(hash(address)) % 10**8:08d}A",
            "fields": {"given_name": "Ada", "address": address},
        },
    )
    assert response.status_code == 201, response.text
    return response.json()["id"], response.headers["etag"]


async def _patch(
    app: FastAPI, http: httpx.AsyncClient, citizen: str, fields: dict[str, Any], etag: str | None = None
) -> httpx.Response:
    act_as(app, "register", "writer")
    headers = {"If-Match": etag} if etag else {}
    return await http.patch(
        f"/v1/citizens/{citizen}/fields", json={"fields": fields, "reason": "told us once"}, headers=headers
    )


async def _audit(engine: AsyncEngine, action: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(AuditEntryRow.canonical).where(AuditEntryRow.action == action).order_by(AuditEntryRow.id)
        )
        return [json.loads(canonical) for canonical in rows.scalars()]


class TestWriteToFeed:
    async def test_a_patch_reaches_the_feed_and_the_read_is_audited(
        self, full_app: FastAPI, http: httpx.AsyncClient, events_engine: AsyncEngine
    ) -> None:
        act_as(full_app, "welfare", "consumer")
        response = await http.post(
            "/v1/subscriptions",
            json={"fields": ["address", "date_of_death"], "purpose": "benefit-eligibility"},
        )
        assert response.status_code == 201, response.text
        cursor = (await http.get("/v1/events")).json()["cursor"]
        citizen, etag = await _register(full_app, http, "1 Old Road")
        written = await _patch(full_app, http, citizen, {"address": "2 New Street"}, etag)
        assert written.status_code == 200, written.text
        act_as(full_app, "welfare", "consumer")
        page = (await http.get("/v1/events", params={"after": cursor, "wait": 5})).json()
        changes = [item for item in page["items"] if item["citizen_id"] == citizen]
        assert changes[-1]["fields"] == ["address"]
        assert changes[-1]["owner"] == "register"
        # The event names the field, never the value.
        assert "New Street" not in json.dumps(page)
        feed_entries = [e for e in await _audit(events_engine, "feed") if e["citizen_id"] == citizen]
        assert feed_entries
        assert feed_entries[-1]["department"] == "welfare"
        assert feed_entries[-1]["fields_released"] == ["address"]
        assert feed_entries[-1]["purpose"] == "benefit-eligibility"
        # Being told of the change through the feed is on the citizen's access log, as a
        # webhook delivery is.
        act_as(full_app, "portal", "citizen-portal")
        logged = (await http.get(f"/v1/citizens/{citizen}/access-log")).json()["items"]
        assert [(item["department"], item["action"], item["fields"]) for item in logged][-1] == (
            "welfare",
            "feed",
            ["address"],
        )

    async def test_a_refused_write_emits_nothing(
        self, full_app: FastAPI, http: httpx.AsyncClient, events_engine: AsyncEngine
    ) -> None:
        citizen, _etag = await _register(full_app, http, "3 Quiet Lane")
        async with events_engine.connect() as conn:
            before = await repository.head_position(conn)
        stale = await _patch(full_app, http, citizen, {"address": "4 Loud Lane"}, '"999"')
        assert stale.status_code == 412, stale.text
        async with events_engine.connect() as conn:
            assert await repository.events_after(conn, before, 10) == []


class TestWriteToWebhook:
    async def test_patch_is_delivered_signed_and_audited_by_the_in_process_dispatcher(
        self,
        full_app: FastAPI,
        http: httpx.AsyncClient,
        receiver: WebhookReceiver,
        events_engine: AsyncEngine,
        agreements: LiveAgreements,
    ) -> None:
        act_as(full_app, "dvla", "consumer")
        response = await http.post(
            "/v1/subscriptions",
            json={
                "fields": ["date_of_death"],
                "purpose": "licence-administration",
                "webhook_url": receiver.url,
            },
        )
        assert response.status_code == 201, response.text
        secret = response.json()["secret"]
        citizen, etag = await _register(full_app, http, "5 Long Road")
        written = await _patch(full_app, http, citizen, {"date_of_death": "2026-11-28"}, etag)
        assert written.status_code == 200, written.text
        [request] = await receiver.until(1)
        payload = Webhook(secret).verify(request.body, request.headers)
        data = payload["data"]
        assert data["citizen_id"] == citizen
        assert data["fields"] == ["date_of_death"]
        # The write's own change event says when it occurred, at the top as well.
        assert stamped_at(payload) == await occurred_at(events_engine, data["event_id"])
        [entry] = [e for e in await _audit(events_engine, "deliver") if e["citizen_id"] == citizen]
        assert entry["department"] == "dvla"
        assert entry["fields_released"] == ["date_of_death"]
        assert entry["purpose"] == "licence-administration"
        assert entry["legal_basis"] == ["Road Traffic Act 1988, s.99"]

        # The owner revokes: the next change is withheld at delivery.
        await agreements.revoke("deaths-to-dvla")
        etag = written.headers["etag"]
        again = await _patch(full_app, http, citizen, {"date_of_death": "2026-11-27"}, etag)
        assert again.status_code == 200, again.text
        act_as(full_app, "dvla", "consumer")
        subscription_id = response.json()["id"]
        deadline = time.monotonic() + 30
        while True:
            deliveries = (await http.get(f"/v1/subscriptions/{subscription_id}/deliveries")).json()["items"]
            if len(deliveries) == 2 and deliveries[1]["status"] != "pending":
                break
            assert time.monotonic() < deadline, deliveries
            await asyncio.sleep(0.02)
        assert [d["status"] for d in deliveries] == ["delivered", "withheld"]
        # The first was released and is named; of the second the list tells no more than
        # the feed would: neither its change nor its citizen, nor the policy's reasons.
        assert deliveries[0]["citizen_id"] == citizen
        assert (deliveries[1]["citizen_id"], deliveries[1]["event_id"]) == (None, None)
        assert deliveries[1]["last_error"] == "withheld by policy"
        assert len(receiver.received) == 1


class TestSubscriptionChangesAudited:
    async def test_a_deletion_is_in_the_stored_trail_and_found_by_its_action(
        self,
        full_app: FastAPI,
        http: httpx.AsyncClient,
        receiver: WebhookReceiver,
        events_engine: AsyncEngine,
    ) -> None:
        act_as(full_app, "dvla", "consumer", client_id="dvla-events")
        created = await http.post(
            "/v1/subscriptions",
            json={
                "fields": ["date_of_death", "licence_status"],
                "purpose": "licence-administration",
                "webhook_url": receiver.url + "?token=kept-private",
            },
        )
        assert created.status_code == 201, created.text
        subscription_id = created.json()["id"]
        assert (await http.delete(f"/v1/subscriptions/{subscription_id}")).status_code == 204
        [entry] = await _audit(events_engine, "subscription-change")
        assert (entry["client_id"], entry["department"]) == ("dvla-events", "dvla")
        assert entry["fields_requested"] == ["date_of_death", "licence_status"]
        assert entry["fields_released"] == []
        assert entry["owners"] == ["dvla", "register"]
        assert entry["purpose"] == "licence-administration"
        assert (entry["decision"], entry["status"], entry["citizen_id"]) == ("permit", 204, None)
        assert entry["reasons"] == [
            {
                "field": "",
                "effect": "deleted",
                "agreement": None,
                "version": None,
                "digest": None,
                "reason": f"subscription {subscription_id} deleted",
                "held_for": None,
            }
        ]
        # Never the secret, nor the receiver's path and query (which may hold a token).
        assert created.json()["secret"] not in json.dumps(entry)
        assert "kept-private" not in json.dumps(entry)
        # Deleting it again is refused, and the refusal is in the stored trail too.
        act_as(full_app, "dvla", "consumer", client_id="dvla-events")
        assert (await http.delete(f"/v1/subscriptions/{subscription_id}")).status_code == 404
        _deleted, refused = await _audit(events_engine, "subscription-change")
        assert (refused["decision"], refused["status"], refused["fields_requested"]) == ("deny", 404, [])
        # An auditor finds both by their action.
        act_as(full_app, "audit-office", "auditor")
        found = await http.get("/v1/audit/entries", params={"action": "subscription-change"})
        assert found.status_code == 200, found.text
        assert sorted(item["entry"]["reasons"][0]["reason"] for item in found.json()["items"]) == [
            f"subscription {subscription_id} deleted",
            f"subscription {subscription_id} not deleted: dvla has no such subscription",
        ]


class TestSubscriptionChangesCommitWithTheirEntries:
    async def test_a_rotation_that_loses_a_race_leaves_no_entry_saying_it_was_made(
        self,
        full_app: FastAPI,
        http: httpx.AsyncClient,
        receiver: WebhookReceiver,
        events_engine: AsyncEngine,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The entry was written first, on its own: a rotation that then found the secret
        changed by another answered 409 while the stored trail said it was made (200)."""
        act_as(full_app, "dvla", "consumer", client_id="dvla-events")
        created = await http.post(
            "/v1/subscriptions",
            json={
                "fields": ["date_of_death"],
                "purpose": "licence-administration",
                "webhook_url": receiver.url,
            },
        )
        assert created.status_code == 201, created.text
        subscription_id = created.json()["id"]
        real_rotate = repository.rotate_secret

        async def raced(conn: AsyncConnection, rotated_id: str, **stored: Any) -> bool:
            # Another rotation commits first, on a connection of its own.
            async with events_engine.begin() as other:
                await other.execute(
                    update(Subscription)
                    .where(Subscription.id == rotated_id)
                    .values(secret_ciphertext=b"sealed by the other rotation")
                )
            return await real_rotate(conn, rotated_id, **stored)

        monkeypatch.setattr(repository, "rotate_secret", raced)
        lost = await http.post(f"/v1/subscriptions/{subscription_id}/rotate-secret")
        assert lost.status_code == 409, lost.text
        assert "whsec_" not in lost.text
        [entry] = [
            e
            for e in await _audit(events_engine, "subscription-change")
            if subscription_id in e["reasons"][0]["reason"]
        ]
        assert (entry["decision"], entry["status"], entry["reasons"][0]["effect"]) == (
            "deny",
            409,
            "secret-rotated",
        )
        assert entry["reasons"][0]["reason"] == (
            f"subscription {subscription_id} not secret-rotated: "
            "another request rotated the secret at the same time"
        )
        async with events_engine.connect() as conn:
            kept = (
                await conn.execute(
                    select(Subscription.secret_ciphertext).where(Subscription.id == subscription_id)
                )
            ).scalar_one()
        assert kept == b"sealed by the other rotation"

        monkeypatch.setattr(repository, "rotate_secret", real_rotate)
        made = await http.post(f"/v1/subscriptions/{subscription_id}/rotate-secret")
        assert made.status_code == 200, made.text
        entries = [
            e
            for e in await _audit(events_engine, "subscription-change")
            if subscription_id in e["reasons"][0]["reason"]
        ]
        assert [(e["decision"], e["status"]) for e in entries] == [("deny", 409), ("permit", 200)]


class TestWorkerProcess:
    async def test_tellonce_worker_delivers_and_stops_on_sigterm(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        receiver: WebhookReceiver,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        events_database_url: str,
        root_key: str,
        tmp_path: Path,
    ) -> None:
        act_as(events_app, "dvla", "consumer")
        response = await api.post(
            "/v1/subscriptions",
            json={
                "fields": ["date_of_death"],
                "purpose": "licence-administration",
                "webhook_url": receiver.url,
            },
        )
        assert response.status_code == 201, response.text
        event_id = await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
        env = {
            **os.environ,
            "TELLONCE_ENV": "test",
            "TELLONCE_DATABASE_URL": events_database_url,
            "TELLONCE_DATA_DIR": str(tmp_path),
            "TELLONCE_ROOT_KEY": root_key,
            "TELLONCE_WEBHOOK_ALLOW_PRIVATE": "true",
            "TELLONCE_EVENTS_POLL_INTERVAL_SECONDS": "0.1",
            "TELLONCE_LOG_LEVEL": "WARNING",
            "TELLONCE_WORKER_NICE": "7",
        }
        log = (tmp_path / "worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            [request] = await receiver.until(1, timeout=60)
            # Every thread of the worker (the event loop's, the drivers', the executor's)
            # runs at the nice value asked for, or at this process's if that is higher.
            nices = _thread_nice_values(worker.pid)
        finally:
            worker.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(worker.wait, 30)
            log.close()
        data = Webhook(response.json()["secret"]).verify(request.body, request.headers)["data"]
        assert data["event_id"] == event_id
        assert code == 0, (tmp_path / "worker.log").read_text()
        # On SQLite the drivers' threads are among them; on PostgreSQL asyncpg needs none.
        assert nices
        assert set(nices) == {max(7, os.getpriority(os.PRIO_PROCESS, 0))}


def _thread_nice_values(pid: int) -> list[int]:
    """The nice value of each thread of a process, from ``/proc`` (field 19 of ``stat``)."""
    values = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        # The command name, in parentheses, may hold spaces: count fields after it.
        after_name = (task / "stat").read_text().rsplit(")", 1)[1].split()
        values.append(int(after_name[16]))
    return values
