"""A department's changes to its own webhook subscription: enabling one the service
disabled (delivery resumes where it stopped), pausing one until it is enabled again, and
rotating its signing secret (both secrets sign through an overlap, then only the new);
refused alike, and audited, for any other."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks import Webhook, WebhookVerificationError

from service.db import utcnow
from service.events.dispatcher import Dispatcher
from service.events.models import Delivery, Subscription
from service.events.secrets import SecretBox, SecretUndecryptable
from service.events.service import EventsRuntime
from tests.events.conftest import ListAuditSink, add_citizen, emit, running
from tests.events.test_dispatcher import spec_verify
from tests.fixtures.auth import act_as
from tests.fixtures.webhooks import Received, WebhookReceiver

PROBLEM = "application/problem+json"


def _assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert str(body["type"]).endswith("/" + slug)
    return body


async def _subscribe(api: httpx.AsyncClient, url: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"fields": ["date_of_death"], "purpose": "licence-administration"}
    if url is not None:
        body["webhook_url"] = url
    response = await api.post("/v1/subscriptions", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def _deliveries(api: httpx.AsyncClient, subscription_id: str) -> list[dict[str, Any]]:
    response = await api.get(f"/v1/subscriptions/{subscription_id}/deliveries")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def _event_ids(received: list[Any]) -> list[str]:
    return [json.loads(request.body)["data"]["event_id"] for request in received]


async def _disabled_by_a_410(
    api: httpx.AsyncClient, dispatcher: Dispatcher, receiver: WebhookReceiver, hook: dict[str, Any]
) -> None:
    """The receiver answers the next webhook 410 Gone: the dispatcher disables ``hook``."""
    receiver.fail_next(1, status=410)
    await dispatcher.run_once()
    assert [r.answered for r in receiver.received] == [410]
    assert (await api.get(f"/v1/subscriptions/{hook['id']}")).json()["status"] == "disabled"


class TestEnable:
    async def test_delivery_resumes_where_it_stopped_with_nothing_lost(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        receiver: WebhookReceiver,
        audit_sink: ListAuditSink,
    ) -> None:
        act_as(events_app, "dvla", "consumer", client_id="dvla-events")
        hook = await _subscribe(api, receiver.url)
        citizen = await add_citizen(events_engine)
        answered = await emit(runtime, citizen, ["date_of_death"], "register")
        queued = await emit(runtime, citizen, ["date_of_death"], "register")
        assert await dispatcher.fan_out() == 2
        # The second waits for a retry an hour away when the first is answered 410 Gone.
        async with events_engine.begin() as conn:
            later = (
                await conn.execute(select(Delivery.id).order_by(Delivery.event_position.desc()).limit(1))
            ).scalar_one()
            await conn.execute(
                update(Delivery)
                .where(Delivery.id == later)
                .values(attempts=1, next_attempt_at=utcnow() + timedelta(hours=1))
            )
        await _disabled_by_a_410(api, dispatcher, receiver, hook)
        gone_webhook_id = receiver.received[0].headers["webhook-id"]
        # Changes made while it is disabled are not sent, but neither are they forgotten.
        while_disabled = [await emit(runtime, citizen, ["date_of_death"], "register") for _ in range(2)]
        await dispatcher.run_once()
        assert len(receiver.received) == 1
        assert [d["status"] for d in await _deliveries(api, hook["id"])] == ["cancelled", "cancelled"]

        enabled = await api.post(f"/v1/subscriptions/{hook['id']}/enable")
        assert enabled.status_code == 200, enabled.text
        shown = enabled.json()
        assert shown["status"] == "active"
        assert "secret" not in shown
        assert shown == (await api.get(f"/v1/subscriptions/{hook['id']}")).json()

        async with running(dispatcher):
            accepted = await receiver.until(4)
        # Every change exactly once (sent side by side, so in any order), each signed by the
        # spec with its secret; the one answered 410 keeps its webhook-id, so a receiver
        # that saw it de-duplicates.
        assert sorted(_event_ids(accepted)) == sorted([answered, queued, *while_disabled])
        [again] = [r for r in accepted if json.loads(r.body)["data"]["event_id"] == answered]
        assert again.headers["webhook-id"] == gone_webhook_id
        for request in accepted:
            spec_verify(hook["secret"], request.headers, request.body)
        deliveries = await _deliveries(api, hook["id"])
        assert [(d["event_id"], d["status"]) for d in deliveries] == [
            (event_id, "delivered") for event_id in (answered, queued, *while_disabled)
        ]
        # Fresh attempts for those the disabling had cancelled.
        assert [d["attempts"] for d in deliveries] == [1, 1, 1, 1]

        # Disabled by the service, enabled by its department: both in the log.
        disabled, enabling = audit_sink.of("subscription-change")
        assert disabled["reasons"][0]["effect"] == "disabled"
        assert (enabling["client_id"], enabling["department"]) == ("dvla-events", "dvla")
        assert (enabling["decision"], enabling["status"], enabling["citizen_id"]) == ("permit", 200, None)
        assert (enabling["fields_requested"], enabling["owners"], enabling["purpose"]) == (
            ["date_of_death"],
            ["register"],
            "licence-administration",
        )
        assert enabling["reasons"][0]["effect"] == "enabled"
        assert enabling["reasons"][0]["reason"] == f"subscription {hook['id']} enabled"
        assert receiver.url.removesuffix("/hooks/tellonce") not in json.dumps(enabling)

    async def test_a_later_410_disables_it_again_and_it_can_be_enabled_again(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        receiver: WebhookReceiver,
    ) -> None:
        act_as(events_app, "dvla", "consumer")
        hook = await _subscribe(api, receiver.url)
        citizen = await add_citizen(events_engine)
        first = await emit(runtime, citizen, ["date_of_death"], "register")
        await _disabled_by_a_410(api, dispatcher, receiver, hook)
        assert (await api.post(f"/v1/subscriptions/{hook['id']}/enable")).status_code == 200
        receiver.fail_next(1, status=410)
        await dispatcher.run_once()
        assert (await api.get(f"/v1/subscriptions/{hook['id']}")).json()["status"] == "disabled"
        second = await emit(runtime, citizen, ["date_of_death"], "register")
        assert (await api.post(f"/v1/subscriptions/{hook['id']}/enable")).status_code == 200
        async with running(dispatcher):
            accepted = await receiver.until(2)
        assert sorted(_event_ids(accepted)) == sorted([first, second])

    async def test_a_dead_delivery_stays_dead_until_redelivered_which_is_no_longer_refused(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        receiver: WebhookReceiver,
    ) -> None:
        act_as(events_app, "dvla", "consumer")
        hook = await _subscribe(api, receiver.url)
        citizen = await add_citizen(events_engine)
        dead = await emit(runtime, citizen, ["date_of_death"], "register")
        receiver.fail_always(500)
        async with running(dispatcher):
            deadline = time.monotonic() + 30
            while [d["status"] for d in await _deliveries(api, hook["id"])] != ["dead"]:
                assert time.monotonic() < deadline, await _deliveries(api, hook["id"])
                await asyncio.sleep(0.02)
        receiver.recover()
        later = await emit(runtime, citizen, ["date_of_death"], "register")
        receiver.fail_next(1, status=410)
        await dispatcher.run_once()
        refused = _assert_problem(
            await api.post(f"/v1/subscriptions/{hook['id']}/redeliver"), 409, "conflict"
        )
        assert "410 Gone" in refused["detail"]
        assert f"/v1/subscriptions/{hook['id']}/enable" in refused["detail"]
        assert (await api.post(f"/v1/subscriptions/{hook['id']}/enable")).status_code == 200
        async with running(dispatcher):
            accepted = await receiver.until(1)
        # Enabling resumes what the disabling stopped; what was dead before stays dead.
        assert _event_ids(accepted) == [later]
        assert [d["status"] for d in await _deliveries(api, hook["id"])] == ["dead", "delivered"]
        assert (await api.post(f"/v1/subscriptions/{hook['id']}/redeliver")).json() == {"requeued": 1}
        async with running(dispatcher):
            accepted = await receiver.until(2)
        assert _event_ids(accepted) == [later, dead]

    async def test_enabling_an_active_subscription_changes_nothing(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        receiver: WebhookReceiver,
        audit_sink: ListAuditSink,
    ) -> None:
        act_as(events_app, "dvla", "consumer")
        for hook in (await _subscribe(api, receiver.url), await _subscribe(api, None)):
            response = await api.post(f"/v1/subscriptions/{hook['id']}/enable")
            assert response.status_code == 200, response.text
            assert response.json() == {k: v for k, v in hook.items() if k != "secret"}
        assert audit_sink.of("subscription-change") == []

    async def test_audited_with_the_change_and_refused_while_the_audit_is_down(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        receiver: WebhookReceiver,
        audit_sink: ListAuditSink,
    ) -> None:
        act_as(events_app, "dvla", "consumer")
        hook = await _subscribe(api, receiver.url)
        await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
        await _disabled_by_a_410(api, dispatcher, receiver, hook)
        audit_sink.failing = True
        _assert_problem(await api.post(f"/v1/subscriptions/{hook['id']}/enable"), 503, "unavailable")
        assert (await api.get(f"/v1/subscriptions/{hook['id']}")).json()["status"] == "disabled"
        assert [d["status"] for d in await _deliveries(api, hook["id"])] == ["cancelled"]


class TestDisable:
    async def test_a_paused_subscription_gets_nothing_until_enabled_and_then_everything(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        receiver: WebhookReceiver,
        audit_sink: ListAuditSink,
    ) -> None:
        act_as(events_app, "dvla", "consumer", client_id="dvla-events")
        hook = await _subscribe(api, receiver.url)
        citizen = await add_citizen(events_engine)
        queued = await emit(runtime, citizen, ["date_of_death"], "register")
        assert await dispatcher.fan_out() == 1

        paused = await api.post(f"/v1/subscriptions/{hook['id']}/disable")
        assert paused.status_code == 200, paused.text
        assert paused.json() == {**{k: v for k, v in hook.items() if k != "secret"}, "status": "disabled"}
        assert paused.json() == (await api.get(f"/v1/subscriptions/{hook['id']}")).json()
        while_paused = await emit(runtime, citizen, ["date_of_death"], "register")
        await dispatcher.run_once()
        assert receiver.received == []
        assert [d["status"] for d in await _deliveries(api, hook["id"])] == ["cancelled"]
        # Pausing it again changes nothing, and writes nothing.
        again = await api.post(f"/v1/subscriptions/{hook['id']}/disable")
        assert again.json() == paused.json()
        [pausing] = audit_sink.of("subscription-change")
        assert (pausing["client_id"], pausing["department"]) == ("dvla-events", "dvla")
        assert (pausing["decision"], pausing["status"], pausing["citizen_id"]) == ("permit", 200, None)
        assert pausing["reasons"][0]["effect"] == "disabled"
        assert pausing["reasons"][0]["reason"] == f"subscription {hook['id']} disabled: by its department"

        assert (await api.post(f"/v1/subscriptions/{hook['id']}/enable")).status_code == 200
        async with running(dispatcher):
            accepted = await receiver.until(2)
        assert sorted(_event_ids(accepted)) == sorted([queued, while_paused])
        for request in accepted:
            spec_verify(hook["secret"], request.headers, request.body)
        assert [e["reasons"][0]["effect"] for e in audit_sink.of("subscription-change")] == [
            "disabled",
            "enabled",
        ]

    async def test_a_paused_feed_subscription_feeds_nothing_until_enabled(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
    ) -> None:
        act_as(events_app, "dvla", "consumer")
        feed = await _subscribe(api, None)
        start = (await api.get("/v1/events")).json()["cursor"]
        assert (await api.post(f"/v1/subscriptions/{feed['id']}/disable")).status_code == 200
        told = await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
        assert (await api.get("/v1/events", params={"after": start})).json()["items"] == []
        assert (await api.post(f"/v1/subscriptions/{feed['id']}/enable")).status_code == 200
        items = (await api.get("/v1/events", params={"after": start})).json()["items"]
        assert [item["event_id"] for item in items] == [told]

    async def test_refused_while_the_audit_is_down_and_for_another_department(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        receiver: WebhookReceiver,
        audit_sink: ListAuditSink,
    ) -> None:
        act_as(events_app, "dvla", "consumer")
        hook = await _subscribe(api, receiver.url)
        audit_sink.failing = True
        _assert_problem(await api.post(f"/v1/subscriptions/{hook['id']}/disable"), 503, "unavailable")
        assert (await api.get(f"/v1/subscriptions/{hook['id']}")).json()["status"] == "active"
        audit_sink.failing = False
        act_as(events_app, "welfare", "consumer")
        _assert_problem(
            await api.post(f"/v1/subscriptions/{hook['id']}/disable"), 404, "subscription-not-found"
        )
        [refused] = audit_sink.of("subscription-change")
        assert (refused["decision"], refused["status"], refused["department"]) == ("deny", 404, "welfare")
        act_as(events_app, "dvla", "consumer")
        assert (await api.get(f"/v1/subscriptions/{hook['id']}")).json()["status"] == "active"


async def _stored_secrets(engine: AsyncEngine, subscription_id: str) -> tuple[Any, Any, Any]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(
                    Subscription.secret_ciphertext,
                    Subscription.previous_secret_ciphertext,
                    Subscription.previous_secret_expires_at,
                ).where(Subscription.id == subscription_id)
            )
        ).one()
    return row[0], row[1], row[2]


def _verifies(secret: str, request: Received) -> bool:
    """Whether the spec's check (``spec_verify``) and the standardwebhooks library, as a
    receiver would run them, both accept ``request`` under ``secret``; they must agree."""
    try:
        spec_verify(secret, request.headers, request.body)
    except AssertionError:
        by_spec = False
    else:
        by_spec = True
    try:
        Webhook(secret).verify(request.body, request.headers)
    except WebhookVerificationError:
        by_library = False
    else:
        by_library = True
    assert by_spec == by_library, (by_spec, by_library)
    return by_spec


class TestRotateSecret:
    async def test_both_secrets_sign_through_the_overlap_and_then_only_the_new(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        receiver: WebhookReceiver,
        audit_sink: ListAuditSink,
    ) -> None:
        act_as(events_app, "dvla", "consumer", client_id="dvla-events")
        hook = await _subscribe(api, receiver.url)
        old = hook["secret"]
        citizen = await add_citizen(events_engine)
        asked_at = utcnow()
        response = await api.post(f"/v1/subscriptions/{hook['id']}/rotate-secret")
        assert response.status_code == 200, response.text
        rotated = response.json()
        new = rotated["secret"]
        assert new.startswith("whsec_")
        assert new != old
        assert (rotated["id"], rotated["status"]) == (hook["id"], "active")
        overlap = timedelta(seconds=runtime.settings.webhook_secret_overlap_seconds)
        assert overlap == timedelta(hours=24)
        until = datetime.fromisoformat(rotated["previous_secret_expires_at"])
        assert asked_at + overlap <= until <= utcnow() + overlap
        # Shown once: never in what GET and the list show, which tell when the old one stops.
        shown = (await api.get(f"/v1/subscriptions/{hook['id']}")).json()
        assert "secret" not in shown
        assert shown == {k: v for k, v in rotated.items() if k != "secret"}

        # Stored only sealed; the old one sealed as the previous, and each only as itself.
        current, previous, expires = await _stored_secrets(events_engine, hook["id"])
        for secret in (new, old):
            for stored in (current, previous):
                assert secret.encode() not in stored
                assert secret.removeprefix("whsec_").encode() not in stored
        assert runtime.secret_box.open(current, hook["id"]) == new
        assert runtime.secret_box.open(previous, hook["id"] + "/previous") == old
        with pytest.raises(SecretUndecryptable):
            runtime.secret_box.open(previous, hook["id"])
        assert expires == until

        # Audited, and never with a secret in it.
        [entry] = audit_sink.of("subscription-change")
        assert (entry["client_id"], entry["department"]) == ("dvla-events", "dvla")
        assert (entry["decision"], entry["status"]) == ("permit", 200)
        assert (entry["fields_requested"], entry["owners"], entry["purpose"]) == (
            ["date_of_death"],
            ["register"],
            "licence-administration",
        )
        assert entry["reasons"][0]["effect"] == "secret-rotated"
        assert entry["reasons"][0]["reason"] == (
            f"subscription {hook['id']} secret-rotated: "
            f"the previous secret signs too until {until.isoformat()}"
        )
        for secret in (new, old):
            assert secret.removeprefix("whsec_") not in json.dumps(entry)

        # During the overlap: two signatures, the new one first; either secret verifies.
        await emit(runtime, citizen, ["date_of_death"], "register")
        await dispatcher.run_once()
        [during] = receiver.accepted()
        signatures = during.headers["webhook-signature"].split(" ")
        assert len(signatures) == 2
        assert _verifies(new, during)
        assert _verifies(old, during)
        assert signatures[0] == Webhook(new).sign(
            during.headers["webhook-id"],
            datetime.fromtimestamp(int(during.headers["webhook-timestamp"]), tz=until.tzinfo),
            during.body.decode(),
        )

        # After it: one signature, the new secret's; the old one no longer verifies.
        runtime.clock = lambda: utcnow() + overlap + timedelta(seconds=1)
        await emit(runtime, citizen, ["date_of_death"], "register")
        await dispatcher.run_once()
        _during, after = receiver.accepted()
        assert len(after.headers["webhook-signature"].split(" ")) == 1
        assert _verifies(new, after)
        assert not _verifies(old, after)
        # The old secret is forgotten once it no longer signs, and no longer shown.
        assert (await _stored_secrets(events_engine, hook["id"]))[1:] == (None, None)
        assert (await api.get(f"/v1/subscriptions/{hook['id']}")).json()["previous_secret_expires_at"] is None

    async def test_a_second_rotation_keeps_only_the_secret_it_replaces_as_the_previous(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        receiver: WebhookReceiver,
    ) -> None:
        act_as(events_app, "dvla", "consumer")
        hook = await _subscribe(api, receiver.url)
        first = (await api.post(f"/v1/subscriptions/{hook['id']}/rotate-secret")).json()["secret"]
        second = (await api.post(f"/v1/subscriptions/{hook['id']}/rotate-secret")).json()["secret"]
        await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
        await dispatcher.run_once()
        [request] = receiver.accepted()
        assert len(request.headers["webhook-signature"].split(" ")) == 2
        assert _verifies(second, request)
        assert _verifies(first, request)
        assert not _verifies(hook["secret"], request)

    async def test_with_no_overlap_the_old_secret_stops_at_once(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        receiver: WebhookReceiver,
    ) -> None:
        runtime.settings = runtime.settings.model_copy(update={"webhook_secret_overlap_seconds": 0})
        act_as(events_app, "dvla", "consumer")
        hook = await _subscribe(api, receiver.url)
        rotated = (await api.post(f"/v1/subscriptions/{hook['id']}/rotate-secret")).json()
        assert rotated["previous_secret_expires_at"] is None
        assert (await _stored_secrets(events_engine, hook["id"]))[1:] == (None, None)
        await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
        await dispatcher.run_once()
        [request] = receiver.accepted()
        assert _verifies(rotated["secret"], request)
        assert not _verifies(hook["secret"], request)

    async def test_a_disabled_subscription_may_be_rotated_then_enabled(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        receiver: WebhookReceiver,
    ) -> None:
        act_as(events_app, "dvla", "consumer")
        hook = await _subscribe(api, receiver.url)
        await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
        await _disabled_by_a_410(api, dispatcher, receiver, hook)
        rotated = await api.post(f"/v1/subscriptions/{hook['id']}/rotate-secret")
        assert rotated.status_code == 200, rotated.text
        assert rotated.json()["status"] == "disabled"
        assert (await api.post(f"/v1/subscriptions/{hook['id']}/enable")).status_code == 200
        async with running(dispatcher):
            [request] = await receiver.until(1)
        assert _verifies(rotated.json()["secret"], request)
        assert _verifies(hook["secret"], request)

    async def test_audited_with_the_change_and_refused_while_the_audit_is_down(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        receiver: WebhookReceiver,
        audit_sink: ListAuditSink,
    ) -> None:
        act_as(events_app, "dvla", "consumer")
        hook = await _subscribe(api, receiver.url)
        before = await _stored_secrets(events_engine, hook["id"])
        audit_sink.failing = True
        body = _assert_problem(
            await api.post(f"/v1/subscriptions/{hook['id']}/rotate-secret"), 503, "unavailable"
        )
        assert "whsec_" not in json.dumps(body)
        assert await _stored_secrets(events_engine, hook["id"]) == before
        audit_sink.failing = False
        await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
        await dispatcher.run_once()
        [request] = receiver.accepted()
        assert request.headers["webhook-signature"].count("v1,") == 1
        assert _verifies(hook["secret"], request)

    async def test_a_secret_that_no_longer_opens_is_mended_with_no_overlap(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        receiver: WebhookReceiver,
    ) -> None:
        act_as(events_app, "dvla", "consumer")
        hook = await _subscribe(api, receiver.url)
        # Sealed under another key (a new root key): nothing can sign with it.
        async with events_engine.begin() as conn:
            await conn.execute(
                update(Subscription)
                .where(Subscription.id == hook["id"])
                .values(secret_ciphertext=SecretBox(b"\x02" * 32).seal(hook["secret"], hook["id"]))
            )
        rotated = (await api.post(f"/v1/subscriptions/{hook['id']}/rotate-secret")).json()
        assert rotated["previous_secret_expires_at"] is None
        await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
        await dispatcher.run_once()
        [request] = receiver.accepted()
        assert request.headers["webhook-signature"].count("v1,") == 1
        assert _verifies(rotated["secret"], request)

    async def test_a_feed_subscription_has_no_secret_to_rotate(
        self, events_app: FastAPI, api: httpx.AsyncClient, audit_sink: ListAuditSink
    ) -> None:
        act_as(events_app, "dvla", "consumer")
        pulled = await _subscribe(api, None)
        body = _assert_problem(
            await api.post(f"/v1/subscriptions/{pulled['id']}/rotate-secret"), 409, "conflict"
        )
        assert "no webhook" in body["detail"]
        assert audit_sink.of("subscription-change") == []


class TestRefusedForAnyOther:
    """Only the owning department may change a subscription; to any other it is 404, as an
    unknown or deleted one is (no existence oracle), and the refusal is audited."""

    @pytest.mark.parametrize("change", ["enable", "rotate-secret"])
    async def test_another_departments_unknown_and_deleted_are_one_404(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        receiver: WebhookReceiver,
        audit_sink: ListAuditSink,
        change: str,
    ) -> None:
        act_as(events_app, "dvla", "consumer")
        theirs = await _subscribe(api, receiver.url)
        await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
        await _disabled_by_a_410(api, dispatcher, receiver, theirs)
        deleted = await _subscribe(api, receiver.url)
        assert (await api.delete(f"/v1/subscriptions/{deleted['id']}")).status_code == 204
        before = len(audit_sink.of("subscription-change"))
        act_as(events_app, "welfare", "consumer")
        asked = [theirs["id"], str(uuid.uuid4())]
        bodies = [
            _assert_problem(await api.post(f"/v1/subscriptions/{i}/{change}"), 404, "subscription-not-found")
            for i in asked
        ]
        act_as(events_app, "dvla", "consumer")
        bodies.append(
            _assert_problem(
                await api.post(f"/v1/subscriptions/{deleted['id']}/{change}"), 404, "subscription-not-found"
            )
        )
        assert bodies[0] == bodies[1] == bodies[2]
        refusals = audit_sink.of("subscription-change")[before:]
        assert [(r["department"], r["decision"], r["status"]) for r in refusals] == [
            ("welfare", "deny", 404),
            ("welfare", "deny", 404),
            ("dvla", "deny", 404),
        ]
        assert all(r["fields_requested"] == [] and r["owners"] == [] for r in refusals)
        assert refusals[0]["reasons"][0]["reason"].startswith(f"subscription {theirs['id']} not ")
        # Still disabled: nothing of the other department's changed.
        assert (await api.get(f"/v1/subscriptions/{theirs['id']}")).json()["status"] == "disabled"

    @pytest.mark.parametrize("change", ["enable", "rotate-secret"])
    async def test_an_id_not_of_the_issued_form_is_422(
        self, events_app: FastAPI, api: httpx.AsyncClient, audit_sink: ListAuditSink, change: str
    ) -> None:
        act_as(events_app, "dvla", "consumer")
        body = _assert_problem(
            await api.post(f"/v1/subscriptions/x'%3B--/{change}"), 422, "validation-failed"
        )
        assert [e["loc"] for e in body["errors"]] == [["path", "subscription_id"]]
        assert audit_sink.entries == []


class TestAccessNoticeSubscriptionsArePortalOnly:
    """An access-notice subscription carries lines of citizens' access logs: only a client
    with the citizen portal's role may make it, read it through the feed or manage it. Another
    client of the same department is answered as for a subscription it does not have."""

    async def test_a_client_without_the_portal_role_can_neither_see_nor_change_it(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        receiver: WebhookReceiver,
        audit_sink: ListAuditSink,
    ) -> None:
        act_as(events_app, "portal", "citizen-portal")
        made = await api.post(
            "/v1/subscriptions", json={"type": "access.recorded", "webhook_url": receiver.url}
        )
        assert made.status_code == 201, made.text
        notices = made.json()
        act_as(events_app, "portal", "consumer", client_id="portal-consumer-only")
        assert (await api.get("/v1/subscriptions")).json()["items"] == []
        before = len(audit_sink.of("subscription-change"))
        for method, path in [
            ("GET", ""),
            ("GET", "/deliveries"),
            ("POST", "/rotate-secret"),
            ("POST", "/disable"),
            ("POST", "/enable"),
            ("POST", "/redeliver"),
            ("DELETE", ""),
        ]:
            response = await api.request(method, f"/v1/subscriptions/{notices['id']}{path}")
            _assert_problem(response, 404, "subscription-not-found")
        # Each refused change is audited as refused, as for another department's.
        refusals = audit_sink.of("subscription-change")[before:]
        refused = [(r["department"], r["decision"], r["status"]) for r in refusals]
        assert refused == [("portal", "deny", 404)] * 4
        # The portal's client still has it, active.
        act_as(events_app, "portal", "citizen-portal")
        shown = await api.get(f"/v1/subscriptions/{notices['id']}")
        assert shown.status_code == 200, shown.text
        assert shown.json()["status"] == "active"
        listed = (await api.get("/v1/subscriptions")).json()["items"]
        assert [item["id"] for item in listed] == [notices["id"]]
        assert (await api.get(f"/v1/subscriptions/{notices['id']}/deliveries")).status_code == 200
