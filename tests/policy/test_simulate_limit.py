"""The most audit entries one simulation replays (``TELLONCE_SIMULATE_MAX_ENTRIES``): a
window holding more is refused with 422 ``simulation-window-too-large`` naming the
``since`` that fits, by the API and by the console alike (both call
``agreements.simulate_draft``), and the replay gives the event loop turns."""

from __future__ import annotations

import asyncio
import html
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from service.audit.models import AuditEntryRow
from service.audit.replay import AuditedRequests
from service.audit.writer import append_many_in_transaction
from service.db import create_engine
from service.policy.engine import Agreement, compile_policy
from service.policy.simulate import DECIDED_PER_TURN, ListSource, RecordedRequest, simulate
from tests.console.test_signed_agreements import post_form, sign_in_as
from tests.fixtures.audit import make_entry
from tests.fixtures.auth import act_as
from tests.policy.test_api import NEW_AGREEMENT, assert_problem

pytestmark = pytest.mark.usefixtures("policies_loaded")

START = datetime(2026, 11, 1, tzinfo=UTC)
LIMIT = 2


def read_at(hour: int, consumer: str = "revenue", field: str = "points") -> RecordedRequest:
    """A read of ``field`` (DVLA's ``points`` unless told) by ``consumer``, ``hour`` hours
    after ``START``."""
    return RecordedRequest(
        consumer=consumer,
        action="read",
        fields=(field,),
        purpose="tax-administration" if consumer == "revenue" else "benefit-eligibility",
        case_ref=None,
        citizen_status="active",
        time=START + timedelta(hours=hour),
    )


@pytest.fixture
def limited(app: FastAPI) -> int:
    """This app with a small limit (the default is 100,000)."""
    app.state.settings = app.state.settings.model_copy(update={"simulate_max_entries": LIMIT})
    return LIMIT


@pytest.fixture
async def five_points_reads(app: FastAPI) -> AsyncIterator[None]:
    """Five reads of DVLA's points at 00:00 to 04:00, and many of the register's fields."""
    # The register's given_name: no DVLA draft can change its decisions.
    requests = [read_at(hour) for hour in range(5)] + [
        read_at(hour, "welfare", "given_name") for hour in range(10)
    ]
    app.state.recorded_requests = ListSource(tuple(requests))
    yield
    app.state.recorded_requests = None


async def query_entries(session: AsyncSession) -> list[dict[str, Any]]:
    rows = await session.execute(
        select(AuditEntryRow.canonical)
        .where(AuditEntryRow.action == "audit-query")
        .order_by(AuditEntryRow.id)
    )
    return [json.loads(text) for text in rows.scalars()]


async def console_simulation(client: httpx.AsyncClient, session: AsyncSession) -> str:
    """The console's simulation page for DVLA's draft ``points-for-revenue``."""
    await sign_in_as(session, client, "dvla")
    page = await post_form(client)
    assert page.status_code == 200, page.text[:3000]
    return page.text


@pytest.mark.usefixtures("limited", "five_points_reads")
class TestSimulateOverTheLimit:
    async def test_is_422_naming_the_since_that_fits(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        act_as(app, "dvla", "data-owner")
        response = await client.post("/v1/policies/simulate", json={"upsert": [NEW_AGREEMENT]})
        problem = assert_problem(response, 422, "simulation-window-too-large")
        # From just after the third newest read, two are left: 03:00 and 04:00.
        fits = "2026-11-01T02:00:00.000001Z"
        assert problem == {
            "type": "https://tellonce.example/problems/simulation-window-too-large",
            "title": "Too many requests to replay",
            "status": 422,
            "detail": (
                "The audit log holds more than 2 recorded requests for the fields this draft changes; "
                "one simulation replays at most 2 (TELLONCE_SIMULATE_MAX_ENTRIES). "
                f"Send since {fits} or later."
            ),
            "errors": [
                {
                    "loc": ["body", "since"],
                    "msg": f"more than 2 requests to replay; send since {fits} or later",
                }
            ],
        }
        narrowed = await client.post("/v1/policies/simulate", json={"upsert": [NEW_AGREEMENT], "since": fits})
        assert narrowed.status_code == 200, narrowed.text
        assert (narrowed.json()["evaluated"], narrowed.json()["changed"]) == (2, 2)

    async def test_a_since_given_is_named(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        act_as(app, "dvla", "data-owner")
        body = {"upsert": [NEW_AGREEMENT], "since": "2026-11-01T01:00:00+01:00"}
        problem = assert_problem(
            await client.post("/v1/policies/simulate", json=body), 422, "simulation-window-too-large"
        )
        assert problem["detail"].startswith(
            "The audit log holds more than 2 recorded requests since 2026-11-01T00:00:00Z for the fields"
        )

    async def test_other_departments_requests_are_not_counted(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        # Ten of the register's reads lie in the window: a DVLA draft never replays them,
        # so they do not count towards the limit (nor does the refusal tell of them).
        act_as(app, "dvla", "data-owner")
        body = {"upsert": [NEW_AGREEMENT], "since": "2026-11-01T03:00:00Z"}
        response = await client.post("/v1/policies/simulate", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["evaluated"] == 2

    async def test_the_refusal_is_audited_as_a_query_of_the_log(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        # Counting the window read the log: the refusal leaves its audit-query entry.
        act_as(app, "dvla", "data-owner", client_id="dvla-owner")
        response = await client.post("/v1/policies/simulate", json={"upsert": [NEW_AGREEMENT]})
        assert_problem(response, 422, "simulation-window-too-large")
        [entry] = await query_entries(session)
        assert (entry["client_id"], entry["owners"], entry["decision"], entry["status"]) == (
            "dvla-owner",
            ["dvla"],
            "deny",
            422,
        )

    async def test_the_console_replays_the_latest_window_that_fits_and_says_so(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        # The console's form has no since: it asks the same function, and on the same
        # refusal replays from the since it names.
        page = await console_simulation(client, session)
        said = re.search(r'<p class="body" id="sim-window">(.*?)</p>', page, re.S)
        assert said is not None, page[:3000]
        assert html.unescape(said.group(1)) == (
            "Only the requests recorded since 1 Nov 2026, 02:00 UTC were replayed: the audit log "
            "holds more than 2 for these fields, the most one simulation replays."
        )
        assert '<dd id="sim-evaluated">2</dd>' in page
        # Both reads of the log are on it: the refused count and the replay.
        assert [(e["decision"], e["status"]) for e in await query_entries(session)] == [
            ("deny", 422),
            ("permit", 200),
        ]


@pytest.mark.usefixtures("five_points_reads")
class TestSimulateWithinTheLimit:
    async def test_a_window_of_exactly_the_limit_is_replayed(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        app.state.settings = app.state.settings.model_copy(update={"simulate_max_entries": 5})
        act_as(app, "dvla", "data-owner")
        response = await client.post("/v1/policies/simulate", json={"upsert": [NEW_AGREEMENT]})
        assert response.status_code == 200, response.text
        assert response.json()["evaluated"] == 5

    async def test_the_console_says_nothing_of_a_window(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        page = await console_simulation(client, session)
        assert 'id="sim-window"' not in page
        assert '<dd id="sim-evaluated">5</dd>' in page


@pytest.fixture
async def audited_store(app: FastAPI, scratch_database: str) -> AsyncIterator[AsyncEngine]:
    """A committed audit log of five reads of DVLA's licence status (10:00 to 10:04) and
    five of the register's given name, as the app's source of past requests."""
    engine = create_engine(scratch_database)
    dvla = {"owners": ["dvla"], "fields_requested": ["licence_status"], "fields_released": []}
    register = {"owners": ["register"], "fields_requested": ["given_name"], "fields_released": []}
    async with engine.begin() as conn:
        await append_many_in_transaction(
            conn,
            [
                make_entry(time=f"2026-11-29T10:0{m}:00+00:00", citizen_status="active", **dvla)
                for m in range(5)
            ]
            + [make_entry(time=f"2026-11-29T10:0{m}:30+00:00", **register) for m in range(5)],
        )
    app.state.recorded_requests = AuditedRequests(engine)
    yield engine
    app.state.recorded_requests = None
    await engine.dispose()


@pytest.mark.usefixtures("limited", "audited_store")
class TestSimulateOverTheAuditStore:
    async def test_the_store_counts_the_window_and_names_the_since_that_fits(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        act_as(app, "dvla", "data-owner")
        response = await client.post("/v1/policies/simulate", json={"upsert": [NEW_AGREEMENT]})
        problem = assert_problem(response, 422, "simulation-window-too-large")
        fits = "2026-11-29T10:02:00.000001Z"
        assert problem["errors"] == [
            {"loc": ["body", "since"], "msg": f"more than 2 requests to replay; send since {fits} or later"}
        ]
        narrowed = await client.post("/v1/policies/simulate", json={"upsert": [NEW_AGREEMENT], "since": fits})
        assert narrowed.status_code == 200, narrowed.text
        assert narrowed.json()["evaluated"] == 2

    async def test_the_register_counts_only_its_own(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        act_as(app, "register", "data-owner")
        draft = {**NEW_AGREEMENT, "id": "names-for-revenue", "fields": ["given_name"]}
        body = {"upsert": [draft], "since": "2026-11-29T10:03:00Z"}
        response = await client.post("/v1/policies/simulate", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["evaluated"] == 2


class TestReplayGivesTheEventLoopTurns:
    async def test_other_tasks_run_while_it_decides(self) -> None:
        # A source that never awaits, as one held in memory: the replay itself gives turns.
        agreement = Agreement(
            id="points-for-revenue",
            owner="dvla",
            consumer="revenue",
            fields=("points",),
            actions=("read",),
            purposes=("tax-administration",),
            legal_basis="Finance Act 2008, Sch. 36",
        )
        live = compile_policy([], {"points": "dvla"}, ["tax-administration"], epoch=1)
        draft = compile_policy([agreement], {"points": "dvla"}, ["tax-administration"], epoch=1)
        source = ListSource(tuple(read_at(0) for _ in range(10 * DECIDED_PER_TURN)))
        turns = 0

        async def other_task() -> None:
            nonlocal turns
            while True:
                await asyncio.sleep(0)
                turns += 1

        task = asyncio.create_task(other_task())
        await asyncio.sleep(0)
        before = turns
        result = await simulate(live, draft, source)
        during = turns - before
        task.cancel()
        assert result.evaluated == 10 * DECIDED_PER_TURN
        assert during >= 9
