"""The citizen view's choices page over the records API on the test's transaction: the
consents it gives and changes wake the events notifier as the API's do, and an agreement
that is no agreement id is refused on the page, never a server error."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.models import AuditEntryRow
from service.auth import service as auth_service
from service.consent import service as consent_service
from service.events.notifier import EventNotifier
from tests.consent.conftest import CONSENTED, PORTAL, ConsentWorld, records_env, world

__all__ = ["records_env", "world"]

CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


async def _csrf(client: httpx.AsyncClient, path: str) -> str:
    found = CSRF.search((await client.get(path)).text)
    assert found is not None
    return found.group(1)


@pytest.fixture
async def portal(world: ConsentWorld, session: AsyncSession) -> httpx.AsyncClient:
    """The world's client, signed in to the console as the citizen portal."""
    created = await auth_service.create_client(session, department="portal", roles=["citizen-portal"])
    assert created.client_secret is not None
    client = world.client
    data = {
        "csrf_token": await _csrf(client, "/console/sign-in"),
        "client_id": created.client_id,
        "client_secret": created.client_secret,
    }
    assert (await client.post("/console/sign-in", data=data)).status_code == 303
    return client


@pytest.fixture
def notifier(world: ConsentWorld) -> EventNotifier:
    """The app's own notifier, so a wake-up by another test cannot be counted here."""
    mine = EventNotifier()
    world.env.app.state.events_notifier = mine
    return mine


class TestChoicesPage:
    async def _post(self, client: httpx.AsyncClient, world: ConsentWorld, **form: Any) -> httpx.Response:
        page = f"/console/citizen/choices?citizen_id={world.citizen_id}"
        data = {"csrf_token": await _csrf(client, page), "citizen_id": world.citizen_id, **form}
        return await client.post("/console/citizen/choices", data=data)

    async def test_giving_and_changing_a_consent_wakes_the_events_notifier(
        self, world: ConsentWorld, portal: httpx.AsyncClient, notifier: EventNotifier
    ) -> None:
        given = await self._post(portal, world, change="give", agreement=CONSENTED["id"])
        assert given.status_code == 303, given.text
        # As after POST /v1/citizens/{id}/consents: the consent.changed event is told at once.
        assert notifier.generation == 1
        listed = await portal.get(f"/v1/citizens/{world.citizen_id}/consents", headers=PORTAL)
        [consent] = listed.json()["items"]
        paused = await self._post(portal, world, change="paused", consent_id=consent["id"])
        assert paused.status_code == 303, paused.text
        assert notifier.generation == 2

    async def test_a_consent_given_twice_is_stored_once(
        self, world: ConsentWorld, portal: httpx.AsyncClient, notifier: EventNotifier
    ) -> None:
        """A second tab or a stale page gives the same consent again: refused on the page,
        and nothing of it kept, so revoking the one consent shown stops the release."""
        assert (await self._post(portal, world, change="give", agreement=CONSENTED["id"])).status_code == 303
        again = await self._post(portal, world, change="give", agreement=CONSENTED["id"])
        assert again.status_code == 409, again.text[-3000:]
        assert "is active: resume or revoke it instead" in again.text
        listed = await portal.get(f"/v1/citizens/{world.citizen_id}/consents", headers=PORTAL)
        [consent] = listed.json()["items"]
        revoked = await self._post(portal, world, change="revoked", consent_id=consent["id"])
        assert revoked.status_code == 303, revoked.text
        listed = await portal.get(f"/v1/citizens/{world.citizen_id}/consents", headers=PORTAL)
        assert [given["status"] for given in listed.json()["items"]] == ["revoked"]

    @pytest.mark.parametrize("agreement", ["", "Bad Id!"])
    async def test_an_agreement_that_is_no_agreement_id_is_refused_on_the_page(
        self, world: ConsentWorld, portal: httpx.AsyncClient, notifier: EventNotifier, agreement: str
    ) -> None:
        page = await self._post(portal, world, change="give", agreement=agreement)
        assert page.status_code == 409
        assert page.headers["content-type"].startswith("text/html")
        assert "That agreement is not one this page offers." in page.text
        assert notifier.generation == 0

    async def test_a_citizen_id_in_capitals_is_the_same_citizen(
        self, world: ConsentWorld, portal: httpx.AsyncClient, notifier: EventNotifier
    ) -> None:
        """A UUID reads the same in capitals: the page takes it as the API's lower-case id."""
        shouted = world.citizen_id.upper()
        page = await portal.get(f"/console/citizen/choices?citizen_id={shouted}")
        assert page.status_code == 200, page.text[-3000:]
        assert f'value="{world.citizen_id}"' in page.text
        data = {
            "csrf_token": await _csrf(portal, "/console/citizen/choices"),
            "citizen_id": f" {shouted} ",
            "change": "give",
            "agreement": CONSENTED["id"],
        }
        given = await portal.post("/console/citizen/choices", data=data)
        assert given.status_code == 303, given.text[-3000:]
        assert given.headers["location"] == f"/console/citizen/choices?citizen_id={world.citizen_id}"
        listed = await portal.get(f"/v1/citizens/{world.citizen_id}/consents", headers=PORTAL)
        assert [c["status"] for c in listed.json()["items"]] == ["active"]

    @pytest.mark.parametrize("citizen_id", ["0000-beef-1", "3f2c1d9e\x00", "g" * 36, "1" * 64])
    async def test_a_citizen_id_of_another_form_is_refused_on_the_page(
        self, world: ConsentWorld, portal: httpx.AsyncClient, notifier: EventNotifier, citizen_id: str
    ) -> None:
        """The API's one rule for a citizen id, on the page too: the change form took any
        text for an id and passed it on to the consent service."""
        shown = await portal.get("/console/citizen/choices", params={"citizen_id": citizen_id})
        assert shown.status_code == 400
        assert "A citizen ID is 36 characters" in shown.text
        data = {
            "csrf_token": await _csrf(portal, "/console/citizen/choices"),
            "citizen_id": citizen_id,
            "change": "give",
            "agreement": CONSENTED["id"],
        }
        changed = await portal.post("/console/citizen/choices", data=data)
        assert changed.status_code == 400, changed.text[-3000:]
        assert changed.headers["content-type"].startswith("text/html")
        assert "A citizen ID is 36 characters" in changed.text
        assert notifier.generation == 0

    async def test_the_newest_consent_holds_past_the_first_page_of_consents(
        self, world: ConsentWorld, portal: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With more consents than one page, the page read the first only: it showed an old
        revoked consent and offered to give one, never to revoke the one in force."""
        monkeypatch.setattr(consent_service, "CHOICES_PAGE", 1)
        first = await world.consent()
        assert first.status_code == 201, first.text
        assert (await world.set_status(first.json()["id"], "revoked")).status_code == 200
        second = await world.consent()
        assert second.status_code == 201, second.text
        page = await portal.get(f"/console/citizen/choices?citizen_id={world.citizen_id}")
        assert page.status_code == 200
        found = re.search(rf'data-agreement="{CONSENTED["id"]}">(.*?)</li>', page.text, re.S)
        assert found is not None
        row = found.group(1)
        assert "You have given your consent." in row
        assert f'name="consent_id" value="{second.json()["id"]}"' in row
        assert 'value="revoked">Revoke consent' in row
        # The view read two pages of consents and the objections: audited once each.
        conn = world.env.audit.conn  # type: ignore[union-attr]
        rows = await conn.execute(
            select(AuditEntryRow.action, AuditEntryRow.citizen_id)
            .where(AuditEntryRow.action.in_(["consent-list", "objection-list"]))
            .order_by(AuditEntryRow.id)
        )
        assert rows.all() == [("consent-list", world.citizen_id), ("objection-list", world.citizen_id)]
