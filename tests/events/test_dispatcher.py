"""Webhooks: signed to the Standard Webhooks spec, retried with backoff, dead-lettered, replayed."""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import hmac
import json
import logging
import random
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from standardwebhooks import Webhook, WebhookVerificationError

from service.auth import service as auth_service
from service.auth.models import Client
from service.db import utcnow
from service.errors import ServiceUnavailable
from service.events import fanout
from service.events import service as events_service
from service.events.cursors import encode_text
from service.events.dispatcher import Dispatcher, backoff_seconds
from service.events.models import Delivery
from service.events.service import EventsRuntime
from tests.events.conftest import ListAuditSink, LiveAgreements, add_citizen, emit, occurred_at, running
from tests.fixtures.auth import act_as
from tests.fixtures.databases import unreachable_engine
from tests.fixtures.webhooks import WebhookReceiver, stamped_at


async def _subscribe(api: httpx.AsyncClient, url: str) -> dict[str, Any]:
    response = await api.post(
        "/v1/subscriptions",
        json={
            "fields": ["date_of_death", "licence_status"],
            "purpose": "licence-administration",
            "webhook_url": url,
        },
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


@pytest.fixture
async def dvla_hook(events_app: FastAPI, api: httpx.AsyncClient, receiver: WebhookReceiver) -> dict[str, Any]:
    """DVLA, subscribed by webhook to date of death for licence administration."""
    act_as(events_app, "dvla", "consumer")
    return await _subscribe(api, receiver.url)


async def _deliveries(api: httpx.AsyncClient, subscription_id: str) -> list[dict[str, Any]]:
    response = await api.get(f"/v1/subscriptions/{subscription_id}/deliveries")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def spec_verify(secret: str, headers: dict[str, str], body: bytes) -> None:
    """The Standard Webhooks receiver's check, written from the spec and not the library's
    code: the key is the base64-decoded bytes after ``whsec_``; the signed content is
    ``{webhook-id}.{webhook-timestamp}.{body}``; ``webhook-timestamp`` is integer seconds
    since the epoch; ``webhook-signature`` is a space-delimited list of ``v1,<base64
    HMAC-SHA256>``, one of which must match."""
    assert secret.startswith("whsec_")
    key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    # The spec asks for a secret of 24 to 64 random bytes.
    assert 24 <= len(key) <= 64
    webhook_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    assert timestamp.isascii(), timestamp
    assert timestamp.isdigit(), timestamp
    assert abs(time.time() - int(timestamp)) < 300
    signed = webhook_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    offered = headers["webhook-signature"].split(" ")
    versions = [signature.partition(",") for signature in offered]
    assert all(version == "v1" and comma == "," for version, comma, _ in versions), offered
    if not any(hmac.compare_digest(expected, value) for _version, _comma, value in versions):
        raise AssertionError("no webhook-signature matches the spec's HMAC of the delivery")


class TestSignedDelivery:
    async def test_every_attempt_verifies_by_the_spec_under_one_webhook_id(
        self,
        dvla_hook: dict[str, Any],
        dispatcher: Dispatcher,
        receiver: WebhookReceiver,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
    ) -> None:
        receiver.fail_next(1, status=500)
        event_id = await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
        async with running(dispatcher):
            await receiver.until(1)
        first, second = receiver.received
        assert (first.answered, second.answered) == (500, 204)
        # A retry is the same message: the same id and body, signed again when it leaves.
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        assert first.body == second.body
        # The body's timestamp is when the event occurred, on each attempt.
        occurred = await occurred_at(events_engine, event_id)
        assert stamped_at(json.loads(first.body)) == stamped_at(json.loads(second.body)) == occurred
        for request in (first, second):
            spec_verify(dvla_hook["secret"], request.headers, request.body)
        # Another secret, an altered body, id or timestamp: no signature matches.
        other = "whsec_" + base64.b64encode(bytes(32)).decode()
        altered = [
            (other, second.headers, second.body),
            (dvla_hook["secret"], second.headers, second.body + b" "),
            (dvla_hook["secret"], {**second.headers, "webhook-id": "msg_other"}, second.body),
            (
                dvla_hook["secret"],
                {**second.headers, "webhook-timestamp": str(int(second.headers["webhook-timestamp"]) - 1)},
                second.body,
            ),
        ]
        for secret, headers, body in altered:
            with pytest.raises(AssertionError, match="no webhook-signature matches"):
                spec_verify(secret, headers, body)

    async def test_receiver_verifies_the_signature_with_standardwebhooks(
        self,
        dvla_hook: dict[str, Any],
        dispatcher: Dispatcher,
        receiver: WebhookReceiver,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        api: httpx.AsyncClient,
        audit_sink: ListAuditSink,
    ) -> None:
        citizen = await add_citizen(events_engine)
        event_id = await emit(runtime, citizen, ["date_of_death", "address"], "register")
        async with running(dispatcher):
            [request] = await receiver.until(1)
        verified = Webhook(dvla_hook["secret"]).verify(request.body, request.headers)
        assert list(verified) == ["type", "timestamp", "data"]
        assert verified["type"] == "citizen.fields_changed"
        # Standard Webhooks' payload structure: the time the event occurred, in RFC 3339.
        assert stamped_at(verified) == await occurred_at(events_engine, event_id)
        data = verified["data"]
        assert data["event_id"] == event_id
        assert data["citizen_id"] == citizen
        # Only the subscribed field that changed; address is not DVLA's business.
        assert data["fields"] == ["date_of_death"]
        assert data["owner"] == "register"
        assert set(data) == {"event_id", "citizen_id", "fields", "owner", "occurred_at"}
        assert request.headers["content-type"] == "application/json"
        # A forged or altered body fails verification.
        with pytest.raises(WebhookVerificationError):
            Webhook(dvla_hook["secret"]).verify(
                request.body.replace(b"register", b"Register"), request.headers
            )
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + "QUJD" * 8).verify(request.body, request.headers)
        [delivery] = await _deliveries(api, dvla_hook["id"])
        assert delivery["status"] == "delivered"
        assert delivery["attempts"] == 1
        assert delivery["webhook_id"] == request.headers["webhook-id"]
        assert delivery["event_id"] == event_id
        assert delivery["last_status_code"] == 204
        [entry] = audit_sink.of("deliver")
        assert entry["department"] == "dvla"
        assert entry["citizen_id"] == citizen
        assert entry["fields_released"] == ["date_of_death"]
        assert entry["purpose"] == "licence-administration"
        assert entry["decision"] == "permit"
        assert entry["source"] == receiver.url.removesuffix("/hooks/tellonce")

    async def test_each_request_is_timestamped_when_its_turn_to_be_sent_comes(
        self, dvla_hook: dict[str, Any], runtime: EventsRuntime, events_engine: AsyncEngine
    ) -> None:
        arrivals: list[tuple[float, httpx.Request]] = []

        async def slow_receiver(request: httpx.Request) -> httpx.Response:
            arrivals.append((time.time(), request))
            await asyncio.sleep(1.5)
            return httpx.Response(204)

        http = httpx.AsyncClient(transport=httpx.MockTransport(slow_receiver))
        one_at_a_time = Dispatcher(runtime, concurrency=1, client=http)
        citizen = await add_citizen(events_engine)
        for _ in range(2):
            await emit(runtime, citizen, ["date_of_death"], "register")
        try:
            await one_at_a_time.run_once()
        finally:
            await one_at_a_time.aclose()
            await http.aclose()
        assert len(arrivals) == 2
        # The second waited for the first's answer; its timestamp is when it left, not when
        # the batch was read (a receiver refuses timestamps beyond its tolerance).
        for arrived, request in arrivals:
            assert arrived - int(request.headers["webhook-timestamp"]) < 1.5
            Webhook(dvla_hook["secret"]).verify(request.content, dict(request.headers))

    async def test_events_of_other_fields_make_no_delivery(
        self,
        dvla_hook: dict[str, Any],
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        api: httpx.AsyncClient,
    ) -> None:
        citizen = await add_citizen(events_engine)
        await emit(runtime, citizen, ["address", "given_name"], "register")
        assert await dispatcher.fan_out() == 0
        await emit(runtime, citizen, ["licence_status"], "dvla")
        assert await dispatcher.fan_out() == 1
        assert len(await _deliveries(api, dvla_hook["id"])) == 1


class TestItsHttpClient:
    async def test_is_made_at_the_first_delivery_and_kept(
        self,
        dvla_hook: dict[str, Any],
        dispatcher: Dispatcher,
        receiver: WebhookReceiver,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
    ) -> None:
        # Making one loads the CA bundle: an app whose dispatcher never delivers pays nothing.
        await dispatcher.fan_out()
        assert dispatcher._client is None
        await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
        async with running(dispatcher):
            await receiver.until(1)
        made = dispatcher._client
        assert made is not None
        assert dispatcher.client is made
        assert made.follow_redirects is False


class TestConsentChanged:
    async def test_the_consumer_gets_its_agreements_consent_changes_signed_and_without_values(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        receiver: WebhookReceiver,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        audit_sink: ListAuditSink,
    ) -> None:
        act_as(events_app, "dvla", "consumer")
        subscribed = await api.post(
            "/v1/subscriptions", json={"type": "consent.changed", "webhook_url": receiver.url}
        )
        assert subscribed.status_code == 201, subscribed.text
        citizen = await add_citizen(events_engine)
        # Changed a while before it is sent: the body's timestamp is the change's time.
        changed_at = utcnow() - timedelta(minutes=7)
        async with events_engine.begin() as conn:
            for consumer, consent_id in (("hmrc", "c-hmrc"), ("dvla", "c-dvla")):
                await events_service.record_consent_change(
                    conn,
                    citizen_id=citizen,
                    consent_id=consent_id,
                    agreement=f"points-for-{consumer}",
                    owner="register",
                    consumer=consumer,
                    purpose="licence-administration",
                    fields=["address"],
                    status="revoked",
                    occurred_at=changed_at,
                )
        async with running(dispatcher):
            [request] = await receiver.until(1)
        verified = Webhook(subscribed.json()["secret"]).verify(request.body, request.headers)
        assert verified["type"] == "consent.changed"
        assert stamped_at(verified) == changed_at
        data = verified["data"]
        # Only DVLA's own agreement; names and the status, nothing else.
        assert (data["consent_id"], data["agreement"], data["status"]) == (
            "c-dvla",
            "points-for-dvla",
            "revoked",
        )
        assert set(data) == {
            "type",
            "event_id",
            "citizen_id",
            "consent_id",
            "agreement",
            "purpose",
            "fields",
            "status",
            "occurred_at",
        }
        [entry] = audit_sink.of("deliver")
        assert (entry["department"], entry["citizen_id"], entry["fields_released"]) == ("dvla", citizen, [])


class TestRetries:
    async def test_fails_twice_then_succeeds_with_the_same_webhook_id(
        self,
        dvla_hook: dict[str, Any],
        dispatcher: Dispatcher,
        receiver: WebhookReceiver,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        api: httpx.AsyncClient,
        audit_sink: ListAuditSink,
    ) -> None:
        receiver.fail_next(2, status=503)
        event_id = await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
        async with running(dispatcher):
            await receiver.until(1)
        assert [r.answered for r in receiver.received] == [503, 503, 204]
        assert len({r.headers["webhook-id"] for r in receiver.received}) == 1
        occurred = await occurred_at(events_engine, event_id)
        for request in receiver.received:
            verified = Webhook(dvla_hook["secret"]).verify(request.body, request.headers)
            assert stamped_at(verified) == occurred
        [delivery] = await _deliveries(api, dvla_hook["id"])
        assert delivery["status"] == "delivered"
        assert delivery["attempts"] == 3
        assert delivery["last_error"] is None
        # Every attempt released the event, so every attempt is in the audit trail.
        assert len(audit_sink.of("deliver")) == 3

    async def test_a_retry_rebuilt_without_a_field_no_longer_released_keeps_its_timestamp(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        receiver: WebhookReceiver,
        agreements: LiveAgreements,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
    ) -> None:
        act_as(events_app, "welfare", "consumer")
        response = await api.post(
            "/v1/subscriptions",
            json={
                "fields": ["date_of_death", "address"],
                "purpose": "benefit-eligibility",
                "webhook_url": receiver.url,
            },
        )
        assert response.status_code == 201, response.text
        secret = response.json()["secret"]
        citizen = await add_citizen(events_engine)
        event_id = await emit(runtime, citizen, ["date_of_death", "address"], "register")
        # The change happened an hour before anything is sent.
        occurred = await occurred_at(events_engine, event_id, move_to=utcnow() - timedelta(hours=1))
        receiver.fail_next(1, status=503)
        await dispatcher.run_once()
        # Between the attempts, welfare loses date of death: the retry's body is made again
        # without it, and still says when the change occurred.
        await agreements.revoke("deaths-to-welfare")
        async with running(dispatcher):
            await receiver.until(1)
        failed, delivered = receiver.received
        assert (failed.answered, delivered.answered) == (503, 204)
        assert failed.headers["webhook-id"] == delivered.headers["webhook-id"]
        first = Webhook(secret).verify(failed.body, failed.headers)
        second = Webhook(secret).verify(delivered.body, delivered.headers)
        assert first["data"]["fields"] == ["date_of_death", "address"]
        assert second["data"]["fields"] == ["address"]
        assert first["timestamp"] == second["timestamp"]
        assert stamped_at(first) == stamped_at(second) == occurred

    def test_backoff_grows_exponentially_with_jitter_up_to_the_cap(self) -> None:
        rng = random.Random(7)
        for attempt, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (8, 60.0), (30, 60.0)]:
            delays = [backoff_seconds(attempt, base=2.0, cap=60.0, rng=rng) for _ in range(50)]
            assert all(ceiling / 2 <= d <= ceiling for d in delays)
            assert len(set(delays)) > 1

    async def test_unreachable_receiver_is_retried_and_recorded(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
    ) -> None:
        act_as(events_app, "dvla", "consumer")
        # Nothing listens on port 9 (discard) of the loopback.
        created = await _subscribe(api, "http://127.0.0.1:9/hook")
        await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
        await dispatcher.run_once()
        [delivery] = await _deliveries(api, created["id"])
        assert delivery["status"] == "pending"
        assert delivery["attempts"] == 1
        assert delivery["last_error"] == "could not reach the receiver: ConnectError"
        assert delivery["last_status_code"] is None


class TestDeadLetters:
    async def test_dead_after_max_attempts_then_redelivered(
        self,
        dvla_hook: dict[str, Any],
        dispatcher: Dispatcher,
        receiver: WebhookReceiver,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        api: httpx.AsyncClient,
        events_app: FastAPI,
    ) -> None:
        # Counted as the app's own dispatcher counts them (service/events/lifecycle.py).
        dispatcher.on_dead = events_app.state.metrics.webhook_dead_letters.inc
        receiver.fail_always(status=500)
        await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
        max_attempts = runtime.settings.webhook_max_attempts
        async with running(dispatcher):
            await receiver.until(max_attempts, accepted=False)
            # The last attempt's result is written just after the receiver answered.
            while (await _deliveries(api, dvla_hook["id"]))[0]["status"] != "dead":
                await receiver.until(max_attempts, accepted=False, timeout=5)
        [dead] = await _deliveries(api, dvla_hook["id"])
        assert dead["status"] == "dead"
        assert dead["attempts"] == max_attempts
        assert dead["last_error"] == "the receiver answered 500"
        assert dead["last_status_code"] == 500
        assert dead["next_attempt_at"] is None
        assert len(receiver.received) == max_attempts
        assert "\ntellonce_webhook_dead_letters_total 1.0\n" in (await api.get("/metrics")).text

        receiver.recover()
        response = await api.post(f"/v1/subscriptions/{dvla_hook['id']}/redeliver")
        assert response.status_code == 200
        assert response.json() == {"requeued": 1}
        async with running(dispatcher):
            [accepted] = await receiver.until(1)
        assert accepted.headers["webhook-id"] == dead["webhook_id"]
        [delivered] = await _deliveries(api, dvla_hook["id"])
        assert delivered["status"] == "delivered"
        again = await api.post(f"/v1/subscriptions/{dvla_hook['id']}/redeliver")
        assert again.json() == {"requeued": 0}

    async def test_a_batch_that_fails_unexpectedly_counts_each_dead_letter_once(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
    ) -> None:
        runtime.settings = runtime.settings.model_copy(update={"webhook_max_attempts": 1})
        dead: list[None] = []
        dispatcher.on_dead = lambda: dead.append(None)
        delivering = False

        async def resolver(host: str, port: int) -> list[str]:
            # The first receiver's address is refused (a dead letter, counted).
            if delivering and host == "hooks-a.example":
                return ["0.0.0.0"]  # noqa: S104
            return ["93.184.215.14"]

        async def broken(*args: object) -> dict[str, Any]:
            # Sending the second one fails unexpectedly, which ends the batch.
            raise RuntimeError("the sender broke")

        runtime.resolver = resolver
        act_as(events_app, "dvla", "consumer")
        first = await _subscribe(api, "https://hooks-a.example/in")
        second = await _subscribe(api, "https://hooks-b.example/in")
        delivering = True
        dispatcher._post = broken  # type: ignore[method-assign,assignment]
        await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
        await dispatcher.run_once()
        deliveries = await _deliveries(api, first["id"]) + await _deliveries(api, second["id"])
        errors = sorted((delivery["status"], delivery["last_error"].split(":")[0]) for delivery in deliveries)
        assert errors == [("dead", "internal error"), ("dead", "target refused")]
        # Two dead letters, each counted once.
        assert len(dead) == 2


class TestPolicyAtDelivery:
    async def test_revoked_before_delivery_is_withheld_and_audited(
        self,
        dvla_hook: dict[str, Any],
        dispatcher: Dispatcher,
        receiver: WebhookReceiver,
        agreements: LiveAgreements,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        api: httpx.AsyncClient,
        audit_sink: ListAuditSink,
    ) -> None:
        citizen = await add_citizen(events_engine)
        await emit(runtime, citizen, ["date_of_death"], "register")
        await agreements.revoke("deaths-to-dvla")
        await dispatcher.run_once()
        [delivery] = await _deliveries(api, dvla_hook["id"])
        # The list tells the consumer that one was withheld, not of which change or citizen,
        # nor the policy's reasons: those are in the audit entry.
        assert delivery["status"] == "withheld"
        assert delivery["last_error"] == "withheld by policy"
        assert delivery["citizen_id"] is None
        assert delivery["event_id"] is None
        assert receiver.received == []
        [entry] = audit_sink.of("deliver")
        assert entry["decision"] == "deny"
        assert entry["fields_released"] == []
        assert entry["citizen_id"] == citizen
        assert entry["reasons"][0]["reason"].startswith("no agreement lets dvla subscribe date_of_death")

    async def test_nothing_more_is_sent_to_a_disabled_client(
        self,
        events_app: FastAPI,
        dispatcher: Dispatcher,
        receiver: WebhookReceiver,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        api: httpx.AsyncClient,
    ) -> None:
        client_id = "dvla-disabled-subscriber"
        act_as(events_app, "dvla", "consumer", client_id=client_id)
        hook = await _subscribe(api, receiver.url)
        async with AsyncSession(events_engine) as session:
            session.add(
                Client(client_id=client_id, name="DVLA, retired", department="dvla", roles=["consumer"])
            )
            await session.flush()
            await auth_service.disable_client(session, "operator:test", client_id)
            await session.commit()
        try:
            citizen = await add_citizen(events_engine)
            await emit(runtime, citizen, ["date_of_death"], "register")
            await dispatcher.run_once()
            [delivery] = await _deliveries(api, hook["id"])
            assert (delivery["status"], delivery["last_error"], delivery["citizen_id"]) == (
                "withheld",
                "the subscribing client is disabled",
                None,
            )
            assert receiver.received == []
        finally:
            async with events_engine.begin() as conn:
                await conn.execute(delete(Client).where(Client.client_id == client_id))

    async def test_condition_is_checked_with_the_citizens_status_now(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        receiver: WebhookReceiver,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
    ) -> None:
        # Welfare hears of address changes only while the citizen is active.
        act_as(events_app, "welfare", "consumer")
        response = await api.post(
            "/v1/subscriptions",
            json={"fields": ["address"], "purpose": "benefit-eligibility", "webhook_url": receiver.url},
        )
        assert response.status_code == 201, response.text
        subscription_id = response.json()["id"]
        deceased = await add_citizen(events_engine, status="deceased")
        await emit(runtime, deceased, ["address"], "register")
        living = await add_citizen(events_engine)
        told = await emit(runtime, living, ["address"], "register")
        await dispatcher.run_once()
        deliveries = await _deliveries(api, subscription_id)
        # The deceased citizen's change is neither sent nor named in the list (nor why).
        assert [(d["status"], d["citizen_id"], d["event_id"]) for d in deliveries] == [
            ("withheld", None, None),
            ("delivered", living, told),
        ]
        assert deceased not in json.dumps(deliveries)
        assert "status" not in deliveries[0]["last_error"]
        [request] = receiver.received
        assert json.loads(request.body)["data"]["event_id"] == told

    async def test_nothing_is_sent_while_the_audit_is_down(
        self,
        dvla_hook: dict[str, Any],
        dispatcher: Dispatcher,
        receiver: WebhookReceiver,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        api: httpx.AsyncClient,
        audit_sink: ListAuditSink,
    ) -> None:
        await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
        audit_sink.failing = True
        await dispatcher.run_once()
        [delivery] = await _deliveries(api, dvla_hook["id"])
        assert delivery["status"] == "pending"
        assert delivery["last_error"] == "the audit log is unavailable; nothing was sent"
        # Nothing was released, so the list does not name the change or its citizen either.
        assert (delivery["citizen_id"], delivery["event_id"]) == (None, None)
        assert receiver.received == []
        # Once the audit is back, it is released, sent and named.
        audit_sink.failing = False
        async with events_engine.begin() as conn:
            await conn.execute(update(Delivery).values(next_attempt_at=utcnow()))
        await dispatcher.run_once()
        [delivery] = await _deliveries(api, dvla_hook["id"])
        assert delivery["status"] == "delivered"
        assert delivery["citizen_id"] is not None
        [request] = receiver.received
        assert json.loads(request.body)["data"]["event_id"] == delivery["event_id"]

    async def test_dns_rebinding_to_a_private_address_is_refused_at_delivery(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        receiver: WebhookReceiver,
    ) -> None:
        answers = {"hooks.dvla.example": ["93.184.215.14"]}

        async def resolve(host: str, port: int) -> list[str]:
            return answers[host]

        runtime.resolver = resolve
        runtime.settings = runtime.settings.model_copy(update={"webhook_allow_private": False})
        act_as(events_app, "dvla", "consumer")
        created = await _subscribe(api, "https://hooks.dvla.example/in")
        # After the check at subscription, the name now points into the private network.
        answers["hooks.dvla.example"] = ["10.0.0.5"]
        await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
        await dispatcher.run_once()
        [delivery] = await _deliveries(api, created["id"])
        assert delivery["status"] == "pending"
        assert delivery["last_error"].startswith(
            "target refused: the host hooks.dvla.example resolves to 10.0.0.5"
        )


class TestDeliveriesApi:
    async def test_pages_with_a_cursor(
        self,
        dvla_hook: dict[str, Any],
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        api: httpx.AsyncClient,
    ) -> None:
        citizen = await add_citizen(events_engine)
        sent = [await emit(runtime, citizen, ["licence_status"], "dvla") for _ in range(3)]
        await dispatcher.fan_out()
        path = f"/v1/subscriptions/{dvla_hook['id']}/deliveries"

        async def pages() -> list[dict[str, Any]]:
            first = (await api.get(path, params={"limit": 2})).json()
            assert len(first["items"]) == 2
            rest = (await api.get(path, params={"limit": 2, "cursor": first["next_cursor"]})).json()
            assert rest["next_cursor"] is None
            items: list[dict[str, Any]] = first["items"] + rest["items"]
            return items

        queued = await pages()
        # Not yet released: listed, but without their events or citizen.
        assert [(d["status"], d["attempts"], d["event_id"]) for d in queued] == [("pending", 0, None)] * 3
        await dispatcher.run_once()
        released = await pages()
        assert [d["id"] for d in released] == [d["id"] for d in queued]
        assert [d["event_id"] for d in released] == sent
        assert {d["citizen_id"] for d in released} == {citizen}

    @pytest.mark.parametrize("cursor", ["%%%", encode_text(f"e1:{2**63}")])
    async def test_a_cursor_it_did_not_give_is_422(
        self, dvla_hook: dict[str, Any], api: httpx.AsyncClient, cursor: str
    ) -> None:
        response = await api.get(f"/v1/subscriptions/{dvla_hook['id']}/deliveries", params={"cursor": cursor})
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body["type"].endswith("/invalid-cursor")
        assert body["errors"] == [{"loc": ["query", "cursor"], "msg": "invalid cursor"}]

    async def test_deleting_the_subscription_cancels_what_is_queued(
        self,
        dvla_hook: dict[str, Any],
        dispatcher: Dispatcher,
        receiver: WebhookReceiver,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        api: httpx.AsyncClient,
    ) -> None:
        await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
        await dispatcher.fan_out()
        assert (await api.delete(f"/v1/subscriptions/{dvla_hook['id']}")).status_code == 204
        assert await dispatcher.run_once() == 0
        async with events_engine.connect() as conn:
            statuses = (await conn.execute(select(Delivery.status))).scalars().all()
        assert statuses == ["cancelled"]
        assert receiver.received == []


class TestClaims:
    async def test_a_claimed_attempt_is_not_claimed_again_until_its_lease_ends(
        self,
        dvla_hook: dict[str, Any],
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
    ) -> None:
        await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
        first, second = Dispatcher(runtime), Dispatcher(runtime)
        try:
            await first.fan_out()
            [claimed] = await first.claim()
            assert await second.claim() == []
            async with events_engine.begin() as conn:
                # The first dispatcher died mid-attempt: its lease runs out.
                await conn.execute(
                    update(Delivery).values(next_attempt_at=claimed.event.occurred_at - timedelta(seconds=1))
                )
            [taken_over] = await second.claim()
            assert taken_over.id == claimed.id
            assert taken_over.attempts == 2
            # The first dispatcher's late result no longer lands.
            await first._record([claimed], {claimed.id: {"status": "delivered"}})
            async with events_engine.connect() as conn:
                assert (await conn.execute(select(Delivery.status))).scalar_one() == "pending"
        finally:
            await first.aclose()
            await second.aclose()

    async def test_payload_is_compact_json_of_type_timestamp_and_data(
        self,
        dvla_hook: dict[str, Any],
        dispatcher: Dispatcher,
        receiver: WebhookReceiver,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
    ) -> None:
        await emit(runtime, await add_citizen(events_engine), ["licence_status"], "dvla")
        async with running(dispatcher):
            [request] = await receiver.until(1)
        payload = json.loads(request.body)
        assert list(payload) == ["type", "timestamp", "data"]
        assert request.body == json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        assert int(request.headers["webhook-timestamp"]) > 0
        assert request.headers["webhook-signature"].startswith("v1,")


def _dispatcher_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "tellonce.events" and r.levelno >= logging.WARNING]


class TestALostDatabase:
    """Webhook batches and their results, or audit appends, lost to the database (a
    restart, a failover) are one warning line a run of them (``FailureLog``); anything else
    unforeseen keeps its traceback."""

    async def test_a_batch_and_its_results_are_one_line(
        self,
        dvla_hook: dict[str, Any],
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
        async with events_engine.begin() as conn:
            await fanout.fan_out(conn)
        batch = await dispatcher.claim()
        assert len(batch) == 1
        caplog.set_level(logging.INFO, logger="tellonce.events")
        async with unreachable_engine() as lost:
            runtime.engine = lost
            try:
                await dispatcher.deliver(batch)
            finally:
                runtime.engine = events_engine
        lines = _dispatcher_lines(caplog)
        # The batch failed, and so did recording its result: one run of failures, one line.
        assert [(r.levelno, r.exc_info) for r in lines] == [(logging.WARNING, None)]
        assert lines[0].getMessage().startswith("webhook batch failed: database unavailable (")

    @pytest.mark.parametrize(
        ("error", "level", "said"),
        [
            pytest.param(
                ServiceUnavailable("The audit log could not record this access."),
                logging.WARNING,
                "audit append for 1 deliveries failed: unavailable"
                " (ServiceUnavailable: The audit log could not record this access.)",
                id="audit-writer-down",
            ),
            pytest.param(
                ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"),
                logging.WARNING,
                "audit append for 1 deliveries failed: database unavailable (ConnectionRefusedError: ",
                id="database-lost",
            ),
            pytest.param(
                RuntimeError("a bug"), logging.ERROR, "audit append for 1 deliveries failed", id="bug"
            ),
        ],
    )
    async def test_an_audit_append(
        self,
        dvla_hook: dict[str, Any],
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        audit_sink: ListAuditSink,
        receiver: WebhookReceiver,
        caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch,
        error: Exception,
        level: int,
        said: str,
    ) -> None:
        async def failing(_entries: object) -> None:
            raise error

        monkeypatch.setattr(audit_sink, "record", failing)
        await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
        caplog.set_level(logging.INFO, logger="tellonce.events")
        await dispatcher.run_once()
        assert receiver.received == []
        [line] = _dispatcher_lines(caplog)
        assert line.levelno == level
        assert line.getMessage().startswith(said)
        assert (line.exc_info is not None) == (level == logging.ERROR)

    async def test_a_run_of_refused_audit_appends_is_one_line_and_their_end_another(
        self,
        dvla_hook: dict[str, Any],
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        audit_sink: ListAuditSink,
        receiver: WebhookReceiver,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        # Before, the audit writer's refusal was a line for every batch.
        runtime.settings = runtime.settings.model_copy(update={"webhook_max_attempts": 10})
        caplog.set_level(logging.INFO, logger="tellonce.events")
        audit_sink.failing = True
        await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
        for _ in range(3):
            async with events_engine.begin() as conn:
                await conn.execute(update(Delivery).values(next_attempt_at=utcnow()))
            assert await dispatcher.run_once() > 0
        assert receiver.received == []
        [refused] = _dispatcher_lines(caplog)
        assert refused.getMessage().startswith("audit append for 1 deliveries failed: unavailable (")
        assert refused.exc_info is None
        audit_sink.failing = False
        async with events_engine.begin() as conn:
            await conn.execute(update(Delivery).values(next_attempt_at=utcnow()))
        await dispatcher.run_once()
        assert len(receiver.received) == 1
        assert [line.getMessage() for line in _dispatcher_lines(caplog)[1:]] == [
            "webhook audit appends: the database is usable again, after 3 failures"
        ]
