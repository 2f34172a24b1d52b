"""The department systems' behaviour on events, against a stand-in API (httpx MockTransport).

The real server is exercised end to end in ``tests/e2e/test_demo.py``; here each rule of
the scenarios is checked on its own: who reads what for which purpose, who writes what,
and what counts as a re-telling avoided.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from service.sim import notifications, scenarios
from service.sim.client import Credentials, DepartmentClient
from service.sim.population import people
from service.sim.scenarios import DemoCitizen, Government
from service.sim.tally import Tally
from service.sim.webhooks import Delivery, WebhookReceivers

DEPARTMENTS = ("register", "dvla", "dwp", "hmrc", "hmpo", "council", "home-office", "citizen-portal")


@dataclass
class StandIn:
    """Answers like the API would, and records every call (department, method, path, body)."""

    calls: list[tuple[str, str, str, Any]] = field(default_factory=list)
    deny_fields: set[str] = field(default_factory=set)
    # The X-Case-Ref of each call that sent one.
    case_refs: list[str] = field(default_factory=list)

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            # Basic auth; each stand-in client's id is its department.
            basic = base64.b64decode(request.headers["authorization"].removeprefix("Basic ")).decode()
            department = basic.partition(":")[0]
            return httpx.Response(200, json={"access_token": f"token-{department}", "expires_in": 300})
        department = request.headers["authorization"].removeprefix("Bearer token-")
        body: Any = json.loads(request.content) if request.content else None
        self.calls.append((department, request.method, request.url.path, body or dict(request.url.params)))
        if "x-case-ref" in request.headers:
            self.case_refs.append(request.headers["x-case-ref"])
        if request.url.path.startswith("/v1/cases/"):
            reference = request.url.path.split("/")[3]
            at = "2026-11-29T12:00:00+00:00"
            return httpx.Response(
                200, json={"department": department, "case_ref": reference, "opened_at": at, "closed_at": at}
            )
        if request.url.path == "/v1/citizens/lookup":
            return httpx.Response(200, json={"id": "c-" + body["national_id"]})
        citizen_id = request.url.path.split("/")[3] if request.url.path.startswith("/v1/citizens/") else ""
        if request.method == "GET" and citizen_id:
            fields = request.url.params["fields"].split(",")
            if set(fields) <= self.deny_fields:
                return httpx.Response(
                    403,
                    json={"type": "about:blank", "title": "Forbidden", "status": 403},
                    headers={"content-type": "application/problem+json"},
                )
            released = {
                name: {"value": "2026-11-29", "version": 1, "updated_at": None, "owner": "register"}
                for name in fields
            }
            return httpx.Response(
                200,
                json={"id": citizen_id, "status": "active", "version": 1, "fields": released, "withheld": []},
            )
        if request.method == "PATCH":
            written = dict.fromkeys(body["fields"], 2)
            return httpx.Response(
                200, json={"id": citizen_id, "status": "active", "version": 2, "fields": written}
            )
        if request.url.path.endswith("/verify"):
            return httpx.Response(200, json={"results": dict.fromkeys(body["claims"], True)})
        return httpx.Response(404, json={"type": "about:blank", "title": "Not found", "status": 404})


@pytest.fixture
async def stand_in() -> StandIn:
    return StandIn()


@pytest.fixture
async def gov(stand_in: StandIn) -> AsyncIterator[Government]:
    tally = Tally()
    transport = httpx.MockTransport(stand_in.handler)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        systems = {
            d: DepartmentClient(http, Credentials(d, ("consumer", "writer"), d, "secret"), tally)
            for d in DEPARTMENTS
        }
        population = [DemoCitizen(p, f"c-{p.national_id}") for p in people(20, seed=7)]
        yield Government(
            systems=systems,
            owners=systems,
            auditor=systems["register"],
            citizens=population,
            tally=tally,
            receivers=WebhookReceivers(),
            seed=7,
        )


def _writes(stand_in: StandIn, department: str) -> list[Any]:
    return [body for d, method, _path, body in stand_in.calls if d == department and method == "PATCH"]


class TestActingOnADeath:
    async def test_each_department_reads_for_bereavement_and_closes_its_own_record(
        self, gov: Government, stand_in: StandIn
    ) -> None:
        citizen = next(c for c in gov.citizens if {"dwp", "dvla"} <= set(c.person.owned))
        gov.told[citizen.citizen_id] = {"register"}
        event = {"event_id": "e1", "citizen_id": citizen.citizen_id, "fields": ["date_of_death"]}

        for department in ("dwp", "dvla", "hmrc"):
            await notifications.act_on(gov, Delivery(department, "webhook", event))

        reads = [(d, body) for d, method, _p, body in stand_in.calls if method == "GET"]
        assert all(body["purpose"] == "bereavement" for _d, body in reads)
        assert all(body["fields"] == "date_of_death" for _d, body in reads)
        assert _writes(stand_in, "dwp") == [
            {"fields": {"benefit_status": "stopped"}, "reason": "death told once, by the register"}
        ]
        assert _writes(stand_in, "dvla")[0]["fields"] == {"licence_status": "cancelled"}
        assert _writes(stand_in, "hmrc") == []  # HMRC notes it; it has no status field to change
        assert gov.tally.retellings_avoided == 3
        assert gov.tally.actions["benefit stopped"] == 1

    async def test_no_write_when_the_death_cannot_be_read(self, gov: Government, stand_in: StandIn) -> None:
        stand_in.deny_fields = {"date_of_death"}
        citizen = next(c for c in gov.citizens if "dwp" in c.person.owned)
        event = {"event_id": "e2", "citizen_id": citizen.citizen_id, "fields": ["date_of_death"]}

        await notifications.act_on(gov, Delivery("dwp", "feed", event))

        assert _writes(stand_in, "dwp") == []
        assert gov.tally.departments["dwp"].denied == 1


class TestRetellingsAvoided:
    async def test_the_department_told_directly_is_not_counted(
        self, gov: Government, stand_in: StandIn
    ) -> None:
        await scenarios.move_house(gov)
        (write,) = _writes(stand_in, "dvla")
        assert write["purpose"] == "address-update"
        assert set(write["fields"]) == {"address", "postcode"}
        citizen_id = next(p for d, m, p, _b in stand_in.calls if m == "PATCH").rsplit("/", 2)[-2]
        event = {"event_id": "e3", "citizen_id": citizen_id, "fields": ["address", "postcode"]}

        await notifications.act_on(gov, Delivery("dvla", "webhook", event))
        await notifications.act_on(gov, Delivery("hmrc", "webhook", event))
        await notifications.act_on(gov, Delivery("council", "feed", event))

        assert gov.tally.retellings_avoided == 2
        assert gov.tally.total_notifications == 3
        address_reads = [(d, b["purpose"]) for d, m, _p, b in stand_in.calls if m == "GET"]
        # DVLA, told directly, reads nothing back; the others read the new address.
        assert address_reads == [("hmrc", "address-update"), ("council", "address-update")]

    async def test_a_redelivered_event_is_acted_on_once(self, gov: Government, stand_in: StandIn) -> None:
        event = {"event_id": "e4", "citizen_id": gov.citizens[0].citizen_id, "fields": ["address"]}

        await notifications.act_on(gov, Delivery("hmrc", "webhook", event))
        await notifications.act_on(gov, Delivery("hmrc", "webhook", event))

        assert gov.tally.total_notifications == 1
        assert gov.tally.retellings_avoided == 1
        assert len([c for c in stand_in.calls if c[0] == "hmrc"]) == 1


class TestOverReach:
    async def test_refusals_are_counted_with_examples(self, gov: Government, stand_in: StandIn) -> None:
        stand_in.deny_fields = {"tax_code", "date_of_birth", "licence_status", "address", "council_tax_band"}
        gov.revoked = True
        for _ in range(40):
            await scenarios.over_reach(gov)

        assert gov.tally.life_events["over-reach refused"] > 0
        attempts = {d.attempt for d in gov.tally.denials}
        assert "council tax band after the council revoked its agreement" in attempts
        assert all(d.status == 403 for d in gov.tally.denials)


class TestFraudInvestigation:
    async def test_dwp_reads_tax_codes_under_a_case_and_closes_the_first(
        self, gov: Government, stand_in: StandIn
    ) -> None:
        for _ in range(6):
            await scenarios.investigate_fraud(gov)
        reads = [b for d, m, _p, b in stand_in.calls if d == "dwp" and m == "GET"]
        assert reads
        assert all((b["fields"], b["purpose"]) == ("tax_code", "fraud-investigation") for b in reads)
        assert len(stand_in.case_refs) == len(reads)
        assert set(stand_in.case_refs) == set(gov.fraud_cases)
        assert gov.tally.life_events["fraud investigation read"] == len(reads)

        await scenarios.close_first_case(gov)

        [close] = [p for d, m, p, _b in stand_in.calls if m == "POST" and p.startswith("/v1/cases/")]
        assert close == f"/v1/cases/{gov.fraud_cases[0]}/close"
        assert gov.tally.actions["DWP closed a fraud case"] == 1

    async def test_the_portal_counts_access_notices_and_disclosures(
        self, gov: Government, stand_in: StandIn
    ) -> None:
        notice = {"type": "access.recorded", "event_id": "n1", "citizen_id": "c-1", "disclosed_by": None}
        await notifications.act_on(gov, Delivery("citizen-portal", "webhook", notice))
        disclosed = {**notice, "event_id": "n2", "disclosed_by": "case-closed"}
        await notifications.act_on(gov, Delivery("citizen-portal", "webhook", disclosed))

        assert (gov.tally.access_notices, gov.tally.disclosed_on_close) == (2, 1)
        assert gov.tally.total_notifications == 0  # not a tell-us-once notification
        assert stand_in.calls == []
