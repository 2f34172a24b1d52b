"""GET /v1/events: ordering, the cursor, long-poll wake-up, and policy checked at every read."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import create_engine
from service.events import service as events_service
from service.events.cursors import encode_position, encode_text
from service.events.notifier import postgres_wakeups
from service.events.service import EventsRuntime
from tests.events.conftest import ListAuditSink, LiveAgreements, add_citizen, emit
from tests.fixtures.auth import act_as


async def _subscribe(api: httpx.AsyncClient, fields: list[str], purpose: str) -> str:
    response = await api.post("/v1/subscriptions", json={"fields": fields, "purpose": purpose})
    assert response.status_code == 201, response.text
    subscription_id: str = response.json()["id"]
    return subscription_id


@pytest.fixture
async def welfare(events_app: FastAPI, api: httpx.AsyncClient) -> httpx.AsyncClient:
    """Welfare, subscribed to address and date of death for benefit eligibility."""
    act_as(events_app, "welfare", "consumer")
    await _subscribe(api, ["address", "date_of_death"], "benefit-eligibility")
    return api


class TestFeedContents:
    async def test_returns_subscribed_fields_in_order_with_a_resumable_cursor(
        self, welfare: httpx.AsyncClient, runtime: EventsRuntime, events_engine: AsyncEngine
    ) -> None:
        citizens = [await add_citizen(events_engine) for _ in range(5)]
        sent = [await emit(runtime, c, ["address", "given_name"], "register") for c in citizens]
        first = (await welfare.get("/v1/events", params={"limit": 3})).json()
        assert [item["event_id"] for item in first["items"]] == sent[:3]
        assert [item["citizen_id"] for item in first["items"]] == citizens[:3]
        # Only the subscribed field is named; the event never carries a value.
        assert all(item["fields"] == ["address"] for item in first["items"])
        assert set(first["items"][0]) == {"event_id", "citizen_id", "fields", "owner", "occurred_at"}
        assert first["items"][0]["owner"] == "register"
        second = (await welfare.get("/v1/events", params={"after": first["cursor"], "limit": 3})).json()
        assert [item["event_id"] for item in second["items"]] == sent[3:]
        # The same cursor gives the same page again: it is stable.
        again = (await welfare.get("/v1/events", params={"after": first["cursor"], "limit": 3})).json()
        assert again == second
        empty = (await welfare.get("/v1/events", params={"after": second["cursor"]})).json()
        assert empty == {"items": [], "cursor": second["cursor"]}

    async def test_skips_events_of_fields_not_subscribed_and_other_owners(
        self, welfare: httpx.AsyncClient, runtime: EventsRuntime, events_engine: AsyncEngine
    ) -> None:
        citizen = await add_citizen(events_engine)
        await emit(runtime, citizen, ["given_name"], "register")
        await emit(runtime, citizen, ["points", "licence_status"], "dvla")
        wanted = await emit(runtime, citizen, ["date_of_death"], "register")
        page = (await welfare.get("/v1/events")).json()
        assert [item["event_id"] for item in page["items"]] == [wanted]
        assert page["items"][0]["fields"] == ["date_of_death"]

    async def test_events_before_the_subscription_are_not_told(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
    ) -> None:
        citizen = await add_citizen(events_engine)
        await emit(runtime, citizen, ["address"], "register")
        act_as(events_app, "welfare", "consumer")
        assert (await api.get("/v1/events")).json()["items"] == []
        await _subscribe(api, ["address"], "benefit-eligibility")
        later = await emit(runtime, citizen, ["address"], "register")
        assert [i["event_id"] for i in (await api.get("/v1/events")).json()["items"]] == [later]

    async def test_another_department_sees_nothing_of_welfares_subscription(
        self,
        welfare: httpx.AsyncClient,
        events_app: FastAPI,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
    ) -> None:
        citizen = await add_citizen(events_engine)
        await emit(runtime, citizen, ["address"], "register")
        act_as(events_app, "revenue", "consumer")
        assert (await welfare.get("/v1/events")).json()["items"] == []

    async def test_each_returned_event_is_audited(
        self,
        welfare: httpx.AsyncClient,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        audit_sink: ListAuditSink,
    ) -> None:
        citizens = [await add_citizen(events_engine) for _ in range(2)]
        for citizen in citizens:
            await emit(runtime, citizen, ["address", "date_of_death"], "register")
        await welfare.get("/v1/events")
        entries = audit_sink.of("feed")
        assert [e["citizen_id"] for e in entries] == citizens
        for entry in entries:
            assert entry["department"] == "welfare"
            assert entry["client_id"] == "welfare-consumer"
            assert entry["fields_released"] == ["address", "date_of_death"]
            assert entry["purpose"] == "benefit-eligibility"
            assert entry["owners"] == ["register"]
            assert entry["decision"] == "permit"
        # A read that returns nothing is not an access to anyone's record.
        await welfare.get("/v1/events", params={"after": encode_position(10**9)})
        assert len(audit_sink.of("feed")) == 2

    async def test_no_events_leave_when_the_audit_is_down(
        self,
        welfare: httpx.AsyncClient,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        audit_sink: ListAuditSink,
    ) -> None:
        await emit(runtime, await add_citizen(events_engine), ["address"], "register")
        audit_sink.failing = True
        response = await welfare.get("/v1/events")
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert "items" not in response.json()


class TestPolicyRecheck:
    async def test_revoked_agreement_stops_the_flow_on_the_next_poll(
        self,
        welfare: httpx.AsyncClient,
        agreements: LiveAgreements,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
    ) -> None:
        citizen = await add_citizen(events_engine)
        first = await emit(runtime, citizen, ["address", "date_of_death"], "register")
        page = (await welfare.get("/v1/events")).json()
        assert [i["event_id"] for i in page["items"]] == [first]
        await agreements.revoke("deaths-to-welfare")
        await emit(runtime, citizen, ["address", "date_of_death"], "register")
        await emit(runtime, citizen, ["date_of_death"], "register")
        page = (await welfare.get("/v1/events", params={"after": page["cursor"]})).json()
        # The first still carries address; the second is withheld entirely.
        assert [i["fields"] for i in page["items"]] == [["address"]]
        await agreements.revoke("addresses-to-welfare")
        await emit(runtime, citizen, ["address"], "register")
        assert (await welfare.get("/v1/events", params={"after": page["cursor"]})).json()["items"] == []

    async def test_condition_on_citizen_status_is_checked_per_event(
        self, welfare: httpx.AsyncClient, runtime: EventsRuntime, events_engine: AsyncEngine
    ) -> None:
        alive = await add_citizen(events_engine)
        deceased = await add_citizen(events_engine, status="deceased")
        await emit(runtime, deceased, ["address"], "register")
        told = await emit(runtime, alive, ["address"], "register")
        assert [i["event_id"] for i in (await welfare.get("/v1/events")).json()["items"]] == [told]


class TestLongPoll:
    async def test_waiting_read_returns_soon_after_a_commit(
        self, welfare: httpx.AsyncClient, runtime: EventsRuntime, events_engine: AsyncEngine
    ) -> None:
        citizen = await add_citizen(events_engine)
        cursor = (await welfare.get("/v1/events")).json()["cursor"]
        wait = 20.0
        started = time.monotonic()
        reader = asyncio.create_task(welfare.get("/v1/events", params={"after": cursor, "wait": wait}))
        # Let the read reach its wait before the write commits.
        while not reader.done() and not runtime.notifier._waiters:
            await asyncio.sleep(0.005)
        assert not reader.done()
        event_id = await emit(runtime, citizen, ["address"], "register")
        page = (await asyncio.wait_for(reader, wait + 5)).json()
        elapsed = time.monotonic() - started
        assert [i["event_id"] for i in page["items"]] == [event_id]
        # Woken by the commit, not by its deadline.
        assert elapsed < wait

    async def test_commit_in_another_process_is_found_by_the_poll_fallback(
        self, welfare: httpx.AsyncClient, runtime: EventsRuntime, events_engine: AsyncEngine
    ) -> None:
        citizen = await add_citizen(events_engine)
        cursor = (await welfare.get("/v1/events")).json()["cursor"]
        wait = 20.0
        reader = asyncio.create_task(welfare.get("/v1/events", params={"after": cursor, "wait": wait}))
        while not reader.done() and not runtime.notifier._waiters:
            await asyncio.sleep(0.005)
        started = time.monotonic()
        async with events_engine.begin() as conn:
            # No notify(): as if another process had committed it.
            event_id = await events_service.record_change(
                conn, citizen_id=citizen, fields=["address"], owner="register"
            )
        page = (await asyncio.wait_for(reader, wait + 5)).json()
        assert [i["event_id"] for i in page["items"]] == [event_id]
        assert time.monotonic() - started < wait

    async def test_wait_without_events_returns_empty_at_the_deadline(
        self, welfare: httpx.AsyncClient
    ) -> None:
        cursor = (await welfare.get("/v1/events")).json()["cursor"]
        started = time.monotonic()
        page = (await welfare.get("/v1/events", params={"after": cursor, "wait": 0.2})).json()
        assert page == {"items": [], "cursor": cursor}
        assert time.monotonic() - started >= 0.2


class TestFeedRefusals:
    @pytest.mark.parametrize(
        ("params", "loc"),
        [
            ({"wait": 31}, ["query", "wait"]),
            ({"wait": -1}, ["query", "wait"]),
            ({"limit": 0}, ["query", "limit"]),
            ({"limit": 501}, ["query", "limit"]),
        ],
    )
    async def test_out_of_range_is_422(
        self, welfare: httpx.AsyncClient, params: dict[str, int], loc: list[str]
    ) -> None:
        response = await welfare.get("/v1/events", params=params)
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body["type"].endswith("/validation-failed")
        assert [e["loc"] for e in body["errors"]] == [loc]

    @pytest.mark.parametrize(
        "cursor",
        [
            "garbage!",
            "ZTE6LTE",
            "eDox",
            "ZTE6",
            # Well formed, but beyond any position the outbox's 64-bit column can hold.
            encode_text(f"e1:{2**63}"),
            encode_text("e1:" + "9" * 40),
        ],
    )
    async def test_foreign_cursor_is_422(self, welfare: httpx.AsyncClient, cursor: str) -> None:
        response = await welfare.get("/v1/events", params={"after": cursor})
        assert response.status_code == 422
        body = response.json()
        assert body["type"].endswith("/invalid-cursor")
        assert body["errors"] == [{"loc": ["query", "after"], "msg": "invalid cursor"}]

    async def test_needs_the_subscribe_scope(self, events_app: FastAPI, api: httpx.AsyncClient) -> None:
        act_as(events_app, "welfare", "writer")
        response = await api.get("/v1/events")
        assert response.status_code == 403
        assert response.json()["type"].endswith("/forbidden")


@pytest.mark.postgres
class TestWakeUpAcrossProcesses:
    async def test_postgres_notify_wakes_a_waiting_read_without_polling(
        self,
        on_postgres: bool,
        events_database_url: str,
        welfare: httpx.AsyncClient,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
    ) -> None:
        if not on_postgres:
            pytest.skip("needs PostgreSQL: LISTEN/NOTIFY; SQLite waiters poll the outbox")
        # Polling slower than the wait: only the NOTIFY sent at commit can wake the read.
        runtime.settings = runtime.settings.model_copy(update={"events_poll_interval_seconds": 60.0})
        citizen = await add_citizen(events_engine)
        cursor = (await welfare.get("/v1/events")).json()["cursor"]
        wait = 20.0
        async with postgres_wakeups(events_database_url, runtime.notifier):
            reader = asyncio.create_task(welfare.get("/v1/events", params={"after": cursor, "wait": wait}))
            while not reader.done() and not runtime.notifier._waiters:
                await asyncio.sleep(0.005)
            started = time.monotonic()
            other_process = create_engine(events_database_url)
            try:
                async with other_process.begin() as conn:
                    event_id = await events_service.record_change(
                        conn, citizen_id=citizen, fields=["address"], owner="register"
                    )
            finally:
                await other_process.dispose()
            page = (await asyncio.wait_for(reader, wait + 5)).json()
        assert [i["event_id"] for i in page["items"]] == [event_id]
        assert time.monotonic() - started < wait
